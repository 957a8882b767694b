"""PairRM all-pairs scoring: batched (rspo) against one pair at a time (the authors' rank.py), on CPU.

A small random DeBERTa-v2 backbone (the PairRM architecture at a reduced size, random weights, a
Unigram tokenizer built on the spot) scores all K(K-1) ordered pairs of each prompt twice:

* ``one-at-a-time``: each pair tokenized and run alone (batch size 1), as LLM-Blender's
  ``Blender.rank(..., batch_size=1)`` in SPPO's ``rank.py``;
* ``batched N``: rspo's ``PairRMScorer.score_pairs`` -- each prompt and candidate tokenized once,
  rows sorted by length and run N at a time (right-padded to the longest row of the batch).

Prints pairs/second (process CPU time and wall time, best of ``--repeats``) of each mode, the ratio
to one-at-a-time, and the largest difference between their logits.
Usage: ``python benchmarks/pairrm_throughput.py [--markdown] [--hidden 128 --layers 2] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import tempfile
import time


def build_tokenizer():
    """A small Unigram (DeBERTa-v2) tokenizer over ``WORDS`` with PairRM's four prefix tokens appended."""
    from transformers import DebertaV2Tokenizer

    from rspo.preference.pairrm import PREFIX_TOKENS

    vocab = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in string.ascii_lowercase]
    vocab += [(c, -4.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    tok = DebertaV2Tokenizer(vocab=vocab)
    tok.add_tokens(PREFIX_TOKENS)
    return tok


def build_scorer(hidden: int, layers: int, heads: int, seed: int = 0):
    import torch
    from safetensors.torch import save_file
    from transformers import DebertaV2Config

    from rspo.preference.pairrm import PairRMModel, load_pairrm

    tok = build_tokenizer()
    cfg = DebertaV2Config(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, relative_attention=True, position_buckets=256, max_relative_positions=-1,
        position_biased_input=False, type_vocab_size=0, norm_rel_ebd="layer_norm", pos_att_type="p2c|c2p",
        share_att_key=True, layer_norm_eps=1e-7, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = PairRMModel(cfg)
    folder = tempfile.mkdtemp(prefix="pairrm-bench-")
    tok.save_pretrained(folder)
    cfg.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{folder}/model.safetensors")
    return load_pairrm(folder, device="cpu", dtype="fp32")


WORDS = (
    "the a of and to in is you that it for on with as are this be by at or from have an they which one "
    "can more your water light energy plants eat sleep move day time people work first second simple "
    "example because when use make good way also help long body system data python list function value"
).split()


def make_prompts(n: int, k: int, seed: int = 0):
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."

    return [(text(10, 30), [text(40, 160) for _ in range(k)]) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--batch-sizes", default="4,8,16,32", help="batched mode: rows per forward")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is robust on a shared machine)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per mode")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    scorer = build_scorer(args.hidden, args.layers, args.heads)
    data = make_prompts(args.prompts, args.k)
    triples = [(p, c[i], c[j]) for p, c in data for i in range(args.k) for j in range(args.k) if i != j]

    def one_at_a_time():
        return np.array([scorer.score_pairs([t], batch_size=1)[0] for t in triples])

    modes = [("one-at-a-time", one_at_a_time)]
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        modes.append((f"batched {bs}", lambda bs=bs: scorer.score_pairs(triples, batch_size=bs)))

    results = {}
    for name, fn in modes:
        fn()  # warm-up
        best_wall = best_cpu = float("inf")
        for _ in range(args.repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            best_wall = min(best_wall, time.perf_counter() - wall)
            best_cpu = min(best_cpu, time.process_time() - cpu)
        results[name] = {"cpu_pairs_per_s": len(triples) / best_cpu, "wall_pairs_per_s": len(triples) / best_wall,
                         "logits": out}
    ref = results["one-at-a-time"]
    lengths = [len(r[0]) for r in scorer.rows(triples)]
    header = {
        "pairs": len(triples), "k": args.k, "prompts": args.prompts,
        "tokens_per_pair": [int(min(lengths)), float(np.mean(lengths)), int(max(lengths))],
        "backbone": f"deberta-v2 hidden {args.hidden}, {args.layers} layers, {args.heads} heads",
        "threads": args.threads,
    }
    table = {
        name: {
            "cpu_pairs_per_s": r["cpu_pairs_per_s"], "wall_pairs_per_s": r["wall_pairs_per_s"],
            "cpu_ratio": r["cpu_pairs_per_s"] / ref["cpu_pairs_per_s"],
            "wall_ratio": r["wall_pairs_per_s"] / ref["wall_pairs_per_s"],
            "max_abs_logit_diff": float(np.abs(r["logits"] - ref["logits"]).max()),
        }
        for name, r in results.items()
    }
    if not args.markdown:
        print(json.dumps({**header, "modes": table}, indent=2))
        return
    print(f"{header['backbone']}, {args.threads} thread(s), {len(triples)} ordered pairs "
          f"({args.prompts} prompts x K={args.k}), tokens per pair min/mean/max {header['tokens_per_pair']}\n")
    print("| mode | pairs/s (CPU time) | ratio | pairs/s (wall) | ratio | max abs logit diff |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['cpu_pairs_per_s']:.1f} | {r['cpu_ratio']:.2f}x | {r['wall_pairs_per_s']:.1f} | "
              f"{r['wall_ratio']:.2f}x | {r['max_abs_logit_diff']:.1e} |")


if __name__ == "__main__":
    main()
