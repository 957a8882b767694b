"""Time and peak memory of one RSPO optimizer step: cached log-probs vs three live models (CPU).

Two designs of the same step on the same batch, each in its own subprocess (clean peaks):

* ``cached`` (rspo): ONE model. log pi_t and log mu come from the ``pairs_logps`` cache, so a step
  is the policy's forward + backward + RMSProp update (``rspo.train.compute_loss``).
* ``live`` (the authors' ``SPPORegTrainer``): the policy plus a frozen pi_t and a frozen mu held in
  memory; every step also runs the two frozen forwards (under ``no_grad``) on the batch, then the
  same loss, backward and update.

Both use the same code (``rspo.logps.sequence_logps``, ``rspo.train.compute_loss``,
``rspo.train.make_optimizer``), fp32, RMSProp, regularizer ``mixed``; only the design differs.
The model is a Llama-shaped ``LlamaForCausalLM`` built at run time (random weights).

Measured per variant: wall time and process CPU time per optimizer step (medians of ``--steps``
after one warm-up step; with one thread the CPU time is the robust figure on a shared machine)
and the peak resident set size (VmHWM, reset after the warm-up step so model building does not
count) during the timed steps, minus the RSS just before the models are built: weights, gradients,
optimizer state, activations and allocator overhead, not the Python/torch import. ``state`` is the
bytes of all parameters (policy + frozen models) and optimizer state, for reference. Usage::

    OMP_NUM_THREADS=1 python benchmarks/train_step.py            # both variants, prints a table
    python benchmarks/train_step.py --markdown                   # ... as a Markdown table row block

``--compare chunk`` measures instead the cached design twice, with the log-probs computed unchunked
(``logps_chunk_size`` 0: full-vocabulary logits and log-softmax of every response token at once) and
chunked (``--logps-chunk-size``, default 256, :mod:`rspo.token_logps`), by default at a Llama-3-sized
vocabulary of 128,256 tokens with prompt 64 + response <= 256 tokens::

    OMP_NUM_THREADS=1 python benchmarks/train_step.py --compare chunk --markdown

Peak memory is the kernel's count of resident pages (VmHWM), so it covers every torch CPU tensor (the
CPU allocator takes its memory from malloc/mmap, which tracemalloc does not see), and each variant runs
in a fresh process. With ``--compare chunk`` the processes run with glibc's mmap threshold at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``): every tensor of 64 KiB or more is then its own mapping, returned to the
kernel when freed, so the resident set follows the live tensors instead of keeping freed heap blocks
(with glibc's default, up to ~350 MiB of freed activations stayed resident in this benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM: the peak RSS since the process started or since :func:`reset_peak_rss`."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(args, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def make_batch(args):
    import random

    from rspo.logps import Encoded
    from rspo.train import PairExample, collate_pairs

    rng = random.Random(0)

    def seq():
        n = rng.randint(args.response_len // 2, args.response_len)  # responses of varied length, as sampled
        ids = [rng.randrange(3, args.vocab) for _ in range(args.prompt_len + n)]
        return Encoded(tuple(ids), args.prompt_len)

    examples = [
        PairExample(f"p{i}", seq(), seq(), (0.7, 0.3), (-300.0, -320.0), (-310.0, -330.0))
        for i in range(args.pairs)
    ]
    return collate_pairs(examples, pad_id=0)


def run_variant(args) -> dict:
    """One variant in this process; returns its measurements."""
    import torch

    from rspo.config import TrainConfig
    from rspo.logps import sequence_logps
    from rspo.losses import resolve_regularizer
    from rspo.train import compute_loss, disable_dropout, make_optimizer

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(regularizer="mixed", learning_rate=5e-7, gradient_checkpointing=args.gradient_checkpointing,
                      logps_chunk_size=args.logps_chunk_size)
    lambdas = resolve_regularizer(cfg.regularizer)
    batch = make_batch(args)
    rss0 = rss_bytes()

    policy = build_model(args, seed=0)
    disable_dropout(policy)
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.train()
    frozen = []
    if args.variant == "live":
        for seed in (0, 1):  # pi_t (a copy of the policy's start) and mu, loaded separately as the authors do
            m = build_model(args, seed=seed).eval().requires_grad_(False)
            frozen.append(m)
    optimizer = make_optimizer(policy, cfg)
    b = args.pairs

    def step():
        if frozen:
            with torch.no_grad():
                last, _ = sequence_logps(frozen[0], batch, chunk_size=cfg.logps_chunk_size)
                ref, _ = sequence_logps(frozen[1], batch, chunk_size=cfg.logps_chunk_size)
            batch["last_logps"] = torch.stack([last[:b], last[b : 2 * b]], 1)
            batch["ref_logps"] = torch.stack([ref[:b], ref[b : 2 * b]], 1)
        out = compute_loss(policy, batch, eta=cfg.eta, lambdas=lambdas, chunk_size=cfg.logps_chunk_size)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item()

    t0 = time.perf_counter()
    first_loss = step()  # warm-up (allocations, optimizer state)
    warmup_s = time.perf_counter() - t0
    peak_reset = reset_peak_rss()  # the peak below is that of the training steps, not of model building
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = peak_rss_bytes()
    return {
        "variant": args.variant,
        "logps_chunk_size": cfg.logps_chunk_size,
        "params": sum(p.numel() for p in policy.parameters()),
        "tokens_per_step": int(batch["attention_mask"].sum()),
        "step_s": statistics.median(times),
        "step_s_all": times,
        "step_cpu_s": statistics.median(cpu_times),
        "warmup_s": warmup_s,
        "first_loss": first_loss,
        "peak_rss_delta_mb": (peak - rss0) / 2**20,
        "peak_covers": "timed steps" if peak_reset else "whole process",
        "state_mb": sum(t.numel() * t.element_size() for m in [policy, *frozen] for t in m.parameters()) / 2**20
        + sum(t.numel() * t.element_size() for st in optimizer.state.values() for t in st.values()
              if torch.is_tensor(t)) / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=["cached", "live"], help="run one variant in this process (internal)")
    p.add_argument("--compare", choices=["design", "chunk"], default="design",
                   help="design: cached vs live (default); chunk: cached with unchunked vs chunked log-probs")
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs per batch (2x sequences per forward); default 2, or 4 with --compare chunk")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--response-len", type=int, default=None,
                   help="max response tokens (uniform in [n/2, n]); default 128, or 256 with --compare chunk")
    p.add_argument("--vocab", type=int, default=None, help="default 16384, or 128256 (Llama-3) with --compare chunk")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--intermediate", type=int, default=1376)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--logps-chunk-size", type=int, default=256,
                   help="train.logps_chunk_size (0 = unchunked); with --compare chunk: the chunked variant's")
    p.add_argument("--mmap-threshold", type=int, default=None,
                   help="glibc M_MMAP_THRESHOLD (bytes) of the variants' processes, so that freed tensors leave "
                        "the resident set; default 65536 with --compare chunk, glibc's own otherwise; 0 = glibc's")
    p.add_argument("--markdown", action="store_true", help="print the result as Markdown")
    args = p.parse_args()
    chunk_case = args.compare == "chunk"
    if args.response_len is None:
        args.response_len = 256 if chunk_case else 128
    if args.vocab is None:
        args.vocab = 128256 if chunk_case else 16384
    if args.pairs is None:
        args.pairs = 4 if chunk_case else 2
    if args.mmap_threshold is None:
        args.mmap_threshold = 65536 if chunk_case else 0

    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    def run(variant: str, chunk: int) -> dict:
        argv = [a for a in sys.argv[1:] if a != "--markdown"]
        argv += ["--variant", variant, "--response-len", str(args.response_len), "--vocab", str(args.vocab),
                 "--pairs", str(args.pairs), "--logps-chunk-size", str(chunk)]  # argparse: the last one wins
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        if args.mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True, env=env)
        return json.loads(out.stdout.strip().splitlines()[-1])

    if chunk_case:
        names = ("unchunked", f"chunked {args.logps_chunk_size}")
        a, b = run("cached", 0), run("cached", args.logps_chunk_size)
    else:
        names = ("cached (1 model)", "live (3 models)")
        a, b = run("cached", args.logps_chunk_size), run("live", args.logps_chunk_size)
    import torch

    settings = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} "
                f"thread(s), torch {torch.__version__}; LlamaForCausalLM {a['params'] / 1e6:.1f}M params "
                f"({args.layers} layers, hidden {args.hidden}, vocab {args.vocab}), fp32, RMSProp, "
                f"{args.pairs} pairs/step = {2 * args.pairs} sequences, prompt {args.prompt_len} + response <= "
                f"{args.response_len} tokens ({a['tokens_per_step']} tokens/step), gradient checkpointing "
                f"{'on' if args.gradient_checkpointing else 'off'}, "
                + (f"{names[0]} vs {names[1]}-token chunks" if chunk_case
                   else f"logps_chunk_size {args.logps_chunk_size}")
                + f", median of {args.steps} steps"
                + (f", glibc mmap threshold {args.mmap_threshold} bytes" if args.mmap_threshold else ""))
    rows = [
        ("wall time per optimizer step (s)", a["step_s"], b["step_s"]),
        ("CPU time per optimizer step (s)", a["step_cpu_s"], b["step_cpu_s"]),
        ("peak RSS delta (MiB)", a["peak_rss_delta_mb"], b["peak_rss_delta_mb"]),
        ("params + optimizer state (MiB)", a["state_mb"], b["state_mb"]),
    ]
    if chunk_case:  # the same step on the same batch: the losses agree to float32 rounding
        rows.append(("loss of the first step", a["first_loss"], b["first_loss"]))
    # ratios as the targets state them: chunked / unchunked, cached / live
    ratio = (lambda x, y: y / x) if chunk_case else (lambda x, y: x / y)
    label = f"{names[1]}/{names[0]}" if chunk_case else "cached/live"
    if args.markdown:
        print(f"Settings: {settings}.\n")
        print(f"| metric | {names[0]} | {names[1]} | ratio {label} |")
        print("|---|---|---|---|")
        for name, x, y in rows:
            fmt = ".7g" if "loss" in name else ".3f"
            print(f"| {name} | {x:{fmt}} | {y:{fmt}} | {ratio(x, y):.2f}x |")
    else:
        print(settings)
        for name, x, y in rows:
            print(f"{name:34s} {names[0]} {x:12.7g}   {names[1]} {y:12.7g}   ratio {ratio(x, y):.2f}x")
        print("raw step times:", names[0], [round(t, 3) for t in a["step_s_all"]], names[1],
              [round(t, 3) for t in b["step_s_all"]], "; peak covers:", a["peak_covers"])


if __name__ == "__main__":
    main()
