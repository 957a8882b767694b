"""Which settings change the bytes of CPU generation and log-probs (issue 8, determinism).

Runs the same work in a fresh subprocess per setting (thread count; the kernel ISA levels forced
through ``ATEN_CPU_CAPABILITY``, ``MKL_CBWR`` and ``ONEDNN_MAX_CPU_ISA``, which must be set before
torch is imported) and compares every run with the first one:

- **logits**: one fp32 forward pass of the model over a fixed padded batch; sha256 of the bytes and
  the largest absolute difference from the first setting;
- **generation**: ``rspo.generation.generate_with_model`` (the transformers backend of
  ``rspo generate``) samples K responses per prompt; the sampled token ids are compared;
- **gradients**: one forward + backward pass (the language-model loss on the same batch, as a
  training step computes); sha256 of all parameter gradients' bytes;
- **CPU seconds**: process CPU time of the generation and of forward + backward (robust on a shared
  machine, unlike wall time; with 2 threads it counts both).

    python benchmarks/determinism.py --model resources/models/smollm2-135m-instruct

Results and the machine they were measured on: ``benchmarks/README.md`` ("Determinism").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (label, threads, extra environment)
AVX2_ALL = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
SETTINGS: list[tuple[str, int, dict[str, str]]] = [
    ("1 thread (reference)", 1, {}),
    ("1 thread again", 1, {}),
    ("2 threads", 2, {}),
    ("1 thread, ATEN_CPU_CAPABILITY=avx2", 1, {"ATEN_CPU_CAPABILITY": "avx2"}),
    ("1 thread, ATEN_CPU_CAPABILITY=default", 1, {"ATEN_CPU_CAPABILITY": "default"}),
    ("1 thread, MKL_CBWR=AVX2", 1, {"MKL_CBWR": "AVX2"}),
    ("1 thread, MKL_CBWR=COMPATIBLE", 1, {"MKL_CBWR": "COMPATIBLE"}),
    ("1 thread, ONEDNN_MAX_CPU_ISA=AVX2", 1, {"ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("1 thread, all three at AVX2", 1, AVX2_ALL),
    ("2 threads, all three at AVX2", 2, AVX2_ALL),
    ("1 thread, use_deterministic_algorithms", 1, {"RSPO_BENCH_DETERMINISTIC": "1"}),
]
PROMPTS = [
    "Give me three tips for staying healthy.",
    "Explain why the sky is blue.",
    "Write a short poem about the sea.",
    "How do I sort a list in Python?",
]


def child(args) -> None:
    import numpy as np
    import torch

    from rspo.config import GenerateConfig, SamplingConfig
    from rspo.generation import generate_with_model
    from rspo.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(args.threads)
    if os.environ.get("RSPO_BENCH_DETERMINISTIC"):
        torch.use_deterministic_algorithms(True)
    tok = load_tokenizer(args.model, padding_side="left")
    model = load_causal_lm(args.model, dtype="fp32", trainable=True).eval()  # eval mode, gradients on
    batch = tok(
        [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            + "Sure. Here is a longer answer that the model scores token by token."
            for p in PROMPTS
        ],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        logits = model(**batch).logits.float().numpy()
    np.save(args.out / "logits.npy", logits)
    start = time.process_time()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    grad_seconds = time.process_time() - start
    grads = hashlib.sha256(
        b"".join(p.grad.numpy().tobytes() for p in model.parameters() if p.grad is not None)
    )
    model.zero_grad(set_to_none=True)
    cfg = GenerateConfig(
        batch_size=4,
        dtype="fp32",
        sampling=SamplingConfig(n=2, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens),
    )
    start = time.process_time()
    with torch.no_grad():
        outs = generate_with_model(
            model, tok, [str(i) for i in range(len(PROMPTS))], PROMPTS, cfg, progress=False
        )
    seconds = time.process_time() - start
    ids = [[list(c.token_ids) for c in o] for o in outs]
    (args.out / "result.json").write_text(
        json.dumps(
            {
                "capability": torch.backends.cpu.get_cpu_capability(),
                "threads": torch.get_num_threads(),
                "ids": ids,
                "seconds": seconds,
                "grad_seconds": grad_seconds,
                "grads_sha256": grads.hexdigest(),
                "logits_sha256": hashlib.sha256(logits.tobytes()).hexdigest(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a causal LM folder (the embedded SmolLM2 by default)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--only", type=int, nargs="*", help="indices into SETTINGS to run (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import numpy as np

    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n, (label, threads, extra) in enumerate(SETTINGS):
            if args.only and n not in args.only:
                continue
            out = Path(tmp) / str(n)
            out.mkdir()
            env = {k: v for k, v in os.environ.items() if k not in AVX2_ALL}
            env.update(extra, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--model",
                    args.model,
                    "--threads",
                    str(threads),
                    "--max-new-tokens",
                    str(args.max_new_tokens),
                    "--out",
                    str(out),
                ],
                env=env,
                check=True,
            )
            res = json.loads((out / "result.json").read_text())
            logits = np.load(out / "logits.npy").astype(np.float64)
            if ref is None:
                ref = (res, logits)
            diff = float(np.abs(logits - ref[1]).max())
            same = sum(a == b for o, r in zip(res["ids"], ref[0]["ids"]) for a, b in zip(o, r))
            total = sum(len(o) for o in res["ids"])
            rows.append(
                (
                    label,
                    res["capability"],
                    res["threads"],
                    res["logits_sha256"][:12],
                    f"{diff:.2e}",
                    f"{same}/{total}",
                    res["grads_sha256"][:12],
                    f"{res['seconds']:.1f}",
                    f"{res['grad_seconds']:.2f}",
                )
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
    print(
        "\n| setting | ATen capability | threads | logits sha256 | max abs diff | samples equal | gradients sha256 "
        "| generation CPU s | fwd+bwd CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
