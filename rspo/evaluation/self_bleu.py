"""Self-BLEU (diversity; lower = more diverse), as the RSPO authors' ``eval_selfbleu.py``.

For each instruction with n samples: every sample is the hypothesis of a sentence BLEU against the
other n - 1 samples as references (NLTK ``sentence_bleu``, 3-gram weights (1/3, 1/3, 1/3),
``SmoothingFunction().method1``); the n scores are averaged per instruction, then over instructions.

Tokenizer: the paper used ``nltk.word_tokenize``, which needs the ``punkt`` download (offline: it
fails). We split sentences with a regex (after ``.``, ``!`` or ``?`` followed by whitespace; punkt
would also skip abbreviations) and tokenise each with ``nltk.tokenize.NLTKWordTokenizer`` -- the
improved Treebank tokenizer that ``word_tokenize`` itself applies to each sentence, shipped as code
inside NLTK. No lower-casing (as the paper).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TOKENIZER = "nltk.NLTKWordTokenizer (Treebank) on regex sentence splits"
WEIGHTS = (1 / 3, 1 / 3, 1 / 3)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tokenize(text: str) -> list[str]:
    """Word tokens of ``text`` (see the module docstring)."""
    from nltk.tokenize import NLTKWordTokenizer

    tok = NLTKWordTokenizer()
    return [t for sentence in _SENTENCE_END.split(text.strip()) if sentence for t in tok.tokenize(sentence)]


def instruction_self_bleu(samples: Sequence[str]) -> float:
    """Mean over samples of BLEU-3(sample | the other samples); needs at least two samples."""
    import warnings

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    if len(samples) < 2:
        raise ValueError(f"Self-BLEU needs at least 2 samples, got {len(samples)}")
    tokens = [tokenize(s) for s in samples]
    smoothing = SmoothingFunction().method1
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns on hypotheses shorter than 3 tokens
        for i, hyp in enumerate(tokens):
            others = tokens[:i] + tokens[i + 1 :]
            scores.append(sentence_bleu(others, hyp, WEIGHTS, smoothing_function=smoothing))
    return float(sum(scores) / len(scores))


def self_bleu(sample_lists: Sequence[Sequence[str]], progress: bool = True) -> tuple[float, list[float]]:
    """(mean over instructions, per-instruction values) for lists of n >= 2 samples each."""
    from tqdm import tqdm

    if not sample_lists:
        raise ValueError("Self-BLEU of no instructions")
    per = [instruction_self_bleu(s) for s in tqdm(sample_lists, desc="self-bleu", unit="instr", disable=not progress)]
    return float(sum(per) / len(per)), per
