"""Agreement of the embedded judge with GPT-4-turbo's own AlpacaEval 2.0 preferences.

Reads the alpaca_eval annotations files in ``--data`` (default ``../shared/data/alpaca_eval/annotations``:
alpaca-7b, claude-2.1, gemma-7b-it, gpt-3.5-turbo-1106; each a model's output against the GPT-4-turbo
reference on the 805 AlpacaEval instructions, judged by ``weighted_alpaca_eval_gpt4_turbo``), scores
every reference and output with the embedded judge, and prints its agreement with the annotator
(``rspo.preference.agreement``): overall, on length-balanced pairs (within 1.5x in characters), on the
pairs where the judge prefers the SHORTER answer, and "the longer answer wins" on the same pairs.

Instructions are split in two halves by their position in AlpacaEval's order: even positions are the
**tuning** half (the half the judge's constants were chosen on), odd positions the **held-out** half.

Each judge variant is an ``EmbeddedParams`` override (``--variant NAME=JSON``); ``v1`` is the first
version of the judge (the new factors switched off) and ``default`` the current defaults.
MiniLM embeddings are cached in ``--cache`` (under results/, not committed): the first run encodes
about 4,800 texts (a few minutes on 2 CPU cores), later runs take seconds.

``--labelled`` prints instead the accuracy on the project's labelled pairs (rspo/data/judge_pairs.jsonl:
a good answer against an off-topic, looping, cut-off, empty or keyword-stuffed one), with each factor
switched off in turn, and the smallest and median margins r(good) - r(bad) per type.

Usage: ``python benchmarks/judge_agreement.py [--markdown] [--per-model] [--labelled]
[--variant NAME='{"structure_weight": 0}']``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_eval" / "annotations"
CACHE = ROOT / "results" / "judge_agreement" / "minilm_embeddings.npz"



class CachingEncoder:
    """Wraps a SentenceTransformer: ``encode`` reads and writes an on-disk cache keyed by text digest."""

    def __init__(self, inner, path: Path):
        self.inner, self.path = inner, path
        self.table: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as z:
                self.table = dict(zip(z["keys"].tolist(), z["vecs"]))
        self.dirty = False

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def encode(self, texts, **kwargs):
        missing = list(dict.fromkeys(t for t in texts if self.key(t) not in self.table))
        if missing:
            kwargs["show_progress_bar"] = True
            vecs = self.inner.encode(missing, **kwargs)
            self.table.update({self.key(t): np.asarray(v, dtype=np.float32) for t, v in zip(missing, vecs)})
            self.dirty = True
        return np.stack([self.table[self.key(t)] for t in texts])

    def save(self):
        if self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = list(self.table)
            tmp = self.path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(keys), vecs=np.stack([self.table[k] for k in keys]))
            tmp.replace(self.path)


def score_all(pairs, options: dict, encoder) -> tuple[np.ndarray, np.ndarray]:
    """Embedded-judge scores of every pair's reference and output under ``options``."""
    from rspo.config import JudgeConfig
    from rspo.preference import get_judge

    judge = get_judge(JudgeConfig(name="embedded", options=options))
    judge._encoder = encoder
    prompts = [p.instruction for p in pairs]
    r_ref = judge.score(prompts, [p.reference for p in pairs])
    r_out = judge.score(prompts, [p.output for p in pairs])
    return r_ref, r_out


def table(pairs, r_ref, r_out, mask):
    from rspo.preference.agreement import agreement

    sel = [p for p, m in zip(pairs, mask) if m]
    return agreement(sel, r_ref[mask], r_out[mask])


PAIRS = ROOT / "rspo" / "data" / "judge_pairs.jsonl"
TYPES = ("off_topic", "repeated", "truncated", "empty", "keyword_stuffed")
#: options that switch one factor off (it is then 1 for every response)
WITHOUT = {
    "repetition": {"distinct_target": 1e-9},
    "completeness": {"truncation_penalty": 1.0},
    "length": {"min_words": 1, "max_words": 10**9},
    "stuffing": {"overlap_free": 1.0},
    "variety": {"variety_target": 0.0},
    "filler": {"filler_penalty": 1.0},
    "structure": {"structure_weight": 0.0},
}


def labelled(encoder, markdown: bool) -> None:
    """Accuracy (r(good) > r(bad), ties are errors) per type on the labelled pairs, per variant."""
    from rspo.config import JudgeConfig
    from rspo.preference import get_judge
    from rspo.preference.embedded import V1_OPTIONS

    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    variants = {"embedded (all factors)": {}, "v1": V1_OPTIONS,
                "relevance only": {k: v for o in WITHOUT.values() for k, v in o.items()}}
    variants.update({f"without {name}": options for name, options in WITHOUT.items()})
    head = ["judge", *TYPES, f"overall ({len(rows)})"]
    print("| " + " | ".join(head) + " |" if markdown else "  ".join(head))
    if markdown:
        print("|" + "---|" * len(head))
    margins = None
    for name, options in variants.items():
        judge = get_judge(JudgeConfig(name="embedded", options=options))
        judge._encoder = encoder
        prompts = [r["prompt"] for r in rows]
        good = judge.score(prompts, [r["good"] for r in rows])
        bad = judge.score(prompts, [r["bad"] for r in rows])
        types = np.array([r["type"] for r in rows])
        acc = [float(np.mean(good[types == t] > bad[types == t])) for t in TYPES]
        cells = [name, *(f"{a:.3f}" for a in acc), f"{np.mean(good > bad):.3f}"]
        print("| " + " | ".join(cells) + " |" if markdown else "  ".join(cells))
        if margins is None:
            margins = {t: (good - bad)[types == t] for t in TYPES}
    encoder.save()
    print()
    for t in TYPES:
        print(f"{t}: smallest margin r(good) - r(bad) {margins[t].min():.3f}, median {np.median(margins[t]):.3f}")


def fmt(x):
    return f"{x:.3f}" if x == x else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of EmbeddedParams overrides")
    ap.add_argument("--no-defaults", action="store_true", help="only the --variant judges (not v1 and default)")
    ap.add_argument("--per-model", action="store_true", help="also one table per annotated model")
    ap.add_argument("--labelled", action="store_true", help="the labelled pairs instead of AlpacaEval")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    from rspo.preference.agreement import load_annotated_pairs
    from rspo.preference.embedded import V1_OPTIONS, default_model_path

    encoder = CachingEncoder(SentenceTransformer(default_model_path(), device="cpu"), args.cache)
    if args.labelled:
        labelled(encoder, args.markdown)
        return
    files = sorted(args.data.glob("*.json"))
    if not files:
        raise SystemExit(f"no annotations files in {args.data}")
    pairs = load_annotated_pairs(files)
    print(f"{len(pairs)} non-tied pairs from {len(files)} files: {', '.join(f.stem for f in files)}")
    variants = {} if args.no_defaults else {"v1": V1_OPTIONS, "default": {}}
    for v in args.variant:
        name, _, blob = v.partition("=")
        variants[name] = json.loads(blob)

    index = np.array([p.index for p in pairs])
    halves = {"tuning (even)": index % 2 == 0, "held-out (odd)": index % 2 == 1}
    groups = dict(halves)
    if args.per_model:
        for model in dict.fromkeys(p.model for p in pairs):
            groups[model] = np.array([p.model == model for p in pairs])
    groups["all 4 files"] = np.ones(len(pairs), dtype=bool)

    rows = []
    for name, options in variants.items():
        t0 = time.perf_counter()
        r_ref, r_out = score_all(pairs, options, encoder)
        encoder.save()
        print(f"[{name}] scored {2 * len(pairs)} texts in {time.perf_counter() - t0:.1f} s")
        for group, mask in groups.items():
            t = table(pairs, r_ref, r_out, mask)
            rows.append((name, group, t))

    head = ["judge", "pairs", "n", "agree", "length-matched", "longer wins", "reference wins", "balanced n",
            "agree", "length-matched", "longer wins", "reference wins", "judge prefers shorter: n", "agree",
            "shorter wins (all pairs)"]
    print()
    print("| " + " | ".join(head) + " |" if args.markdown else "  ".join(head))
    if args.markdown:
        print("|" + "---|" * len(head))
    for name, group, t in rows:
        a, b, s = t["all"], t["balanced"], t["judge_prefers_shorter"]
        cells = [name, group, a["n"], fmt(a["judge"]), fmt(a["length_matched"]), fmt(a["longer_wins"]),
                 fmt(1 - a["output_wins"]), b["n"], fmt(b["judge"]), fmt(b["length_matched"]), fmt(b["longer_wins"]),
                 fmt(1 - b["output_wins"]), s["n"], fmt(s["judge"]), fmt(1 - a["longer_wins"])]
        print("| " + " | ".join(str(c) for c in cells) + " |" if args.markdown else "  ".join(str(c) for c in cells))


if __name__ == "__main__":
    main()
