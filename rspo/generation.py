"""Sampling K responses per prompt: one interface, two backends.

:func:`generate` turns prompts into rows of the ``responses`` table (``rspo.artifacts.SCHEMAS``).
Both backends format a prompt with :func:`rspo.chat.encode_prompt` (the chat template, then the
prompt's END kept when it is longer than ``max_prompt_length``): the same tokens that
``rspo logps`` scores a response after.

- ``transformers`` (CPU or GPU): prompts are batched ``batch_size`` at a time, LEFT padded, and
  decoded token by token with a KV cache (:func:`generate_with_model`). The prompt is run once and
  its cache repeated for the K samples. Sampling is temperature then top-p (nucleus); temperature 0
  is greedy. Randomness is per response: sample k of prompt ``prompt_id`` draws its uniforms from
  its own ``torch.Generator`` seeded by :func:`stream_seed`, and picks the token by inverse-CDF.
  So a response does not depend on which prompts share its batch, on the batch size, on the
  prompt order, or on K (sample k is the same for n=3 and n=5); it changes only through the
  floating-point noise that different padding / batch shapes put into the logits (exactly the same
  config on the same machine gives identical output).
- ``vllm`` (GPU): prompts passed as token ids. ``seeding: per_sample``: one ``LLM.generate`` call
  over all prompts, each prompt ONE request with ``SamplingParams(n=K, temperature, top_p,
  max_tokens, seed)``; vLLM seeds each request's generator with ``seed``. ``seeding: passes``: the
  authors' ``generate.py``, K calls over all prompts with ``n=1``, call p seeded with
  ``seed + 50 p``. Its samples differ from the transformers backend's. vllm is imported only here,
  and only when asked for.

Seeding (``SamplingConfig.seeding``): ``per_sample`` (default) seeds sample k of prompt x with
:func:`sample_seed` (seed, prompt_id, k); ``passes`` seeds sample k of EVERY prompt with
:func:`pass_seed` = ``seed + 50 k`` (the authors' K passes with seeds 0, 50, 100, ... when seed = 0),
on both backends.

Per response: the text (decoded without special tokens, so without the eos), the sampled token ids
(every generated token, the eos that ended a ``"stop"`` response included), the number of generated
tokens (= their count) and the finish reason, ``"stop"`` (eos) or ``"length"`` (``max_new_tokens``
reached). ``rspo logps`` and ``rspo train`` score exactly these ids after the prompt's ids.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rspo.chat import encode_prompt
from rspo.config import GenerateConfig, SamplingConfig
from rspo.errors import RSPOError

if TYPE_CHECKING:
    from rspo.sharding import Shard

log = logging.getLogger(__name__)

BACKENDS = ("transformers", "vllm")
FINISH_REASONS = ("stop", "length")
SEEDINGS = ("per_sample", "passes")
PASS_SEED_STRIDE = 50  # the authors' generate.py: pass p uses seed p * 50
VLLM_MISSING = "the vllm generation backend needs vLLM and a CUDA GPU: pip install 'rspo[gpu]'"


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int  # generated tokens, the terminating eos included
    finish_reason: str  # "stop" | "length"
    token_ids: tuple[int, ...] = ()  # the sampled ids (len == num_tokens), the terminating eos included


# --------------------------------------------------------------------------- public interface


def check_config(cfg: GenerateConfig) -> None:
    s = cfg.sampling
    problems = []
    if cfg.backend not in BACKENDS:
        problems.append(f"backend {cfg.backend!r} (allowed: {', '.join(BACKENDS)})")
    if s.n < 1:
        problems.append(f"sampling.n={s.n} (need >= 1)")
    if s.temperature < 0:
        problems.append(f"sampling.temperature={s.temperature} (need >= 0; 0 = greedy)")
    if not 0 < s.top_p <= 1:
        problems.append(f"sampling.top_p={s.top_p} (need 0 < top_p <= 1)")
    if s.max_new_tokens < 1:
        problems.append(f"sampling.max_new_tokens={s.max_new_tokens} (need >= 1)")
    if cfg.batch_size < 1:
        problems.append(f"batch_size={cfg.batch_size} (need >= 1)")
    if cfg.max_prompt_length is not None and cfg.max_prompt_length < 1:
        problems.append(f"max_prompt_length={cfg.max_prompt_length} (need >= 1 or null)")
    if s.seeding not in SEEDINGS:
        problems.append(f"sampling.seeding={s.seeding!r} (allowed: {', '.join(SEEDINGS)})")
    if problems:
        raise RSPOError("invalid generation config: " + "; ".join(problems))


def sampling_record(cfg: GenerateConfig) -> dict:
    """The ``sampling`` field of every responses row."""
    s = cfg.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
            "seed": s.seed, "n": s.n, "backend": cfg.backend, "seeding": s.seeding}


def generate(model_ref: str, prompts: Sequence[dict], cfg: GenerateConfig, progress: bool = True,
             shard: Shard | None = None) -> list[dict]:
    """Rows of the ``responses`` table: K = ``cfg.sampling.n`` responses for each prompt row
    (``prompt_id``, ``prompt``), in the order of ``prompts``. With ``shard`` only the prompts of
    that shard's batches (:func:`generation_batches`), still in the order of ``prompts``; a shard
    without a batch loads no model and returns no row."""
    from rspo.sharding import num_chunks, shard_units

    check_config(cfg)
    ids = [str(p["prompt_id"]) for p in prompts]
    texts = [p["prompt"] for p in prompts]
    if shard is not None and not shard_units(num_chunks(len(texts), cfg.batch_size), shard):
        log.info("shard %s has no batch of the %d prompts: nothing to generate", shard, len(texts))
        return []
    if cfg.backend == "vllm":
        completions = generate_vllm(model_ref, texts, cfg, shard=shard)
    else:
        from rspo.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(model_ref, padding_side="left")
        model = load_causal_lm(model_ref, dtype=cfg.dtype)
        completions = generate_with_model(model, tokenizer, ids, texts, cfg, progress=progress, shard=shard)
    sampling = sampling_record(cfg)
    return [
        {
            "prompt_id": pid,
            "prompt": text,
            "responses": [c.text for c in outs],
            "token_ids": [list(c.token_ids) for c in outs],
            "num_tokens": [c.num_tokens for c in outs],
            "finish_reasons": [c.finish_reason for c in outs],
            "generator": str(model_ref),
            "sampling": dict(sampling),
        }
        for pid, text, outs in zip(ids, texts, completions, strict=True)
        if outs is not None
    ]


# --------------------------------------------------------------------------- sampling


def sample_seed(seed: int, prompt_id: str, k: int) -> int:
    """The seed of sample ``k`` of prompt ``prompt_id``: a hash, so streams are independent."""
    digest = hashlib.sha256(f"{seed}\x00{prompt_id}\x00{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def pass_seed(seed: int, k: int) -> int:
    """The seed of pass ``k`` (``seeding: passes``): ``seed + 50 k``, shared by every prompt of the pass."""
    return seed + PASS_SEED_STRIDE * k


def stream_seed(sampling: SamplingConfig, prompt_id: str, k: int) -> int:
    """The seed of the random stream of sample ``k`` of ``prompt_id`` under ``sampling.seeding``."""
    if sampling.seeding == "passes":
        return pass_seed(sampling.seed, k)
    return sample_seed(sampling.seed, prompt_id, k)


TOP_P_CANDIDATES = 256  # top-p looks at the 256 most likely tokens first; rows whose nucleus is larger sort all


def sample_next_token(logits, sampling: SamplingConfig, uniforms=None):
    """Next token per row from ``logits`` (B, V): greedy when temperature is 0; else softmax of
    logits / temperature, then top-p and inverse-CDF with one uniform ``u`` in [0, 1) per row
    (``uniforms``, (B,); drawn from torch's global generator when None).

    top-p keeps the most likely tokens, in descending order, while the mass BEFORE a token is below
    ``top_p`` (so the token that crosses ``top_p`` is kept); the token picked is the first whose
    cumulative kept mass exceeds ``u`` times the kept total. With ``top_p`` = 1 nothing is dropped
    and the CDF runs in vocabulary order (no sort). Exactly the same picks as sorting the whole
    vocabulary: only the ``TOP_P_CANDIDATES`` most likely tokens are sorted, unless a row's nucleus
    is larger, in which case that row sorts all."""
    import torch

    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    if uniforms is None:
        uniforms = torch.rand(logits.shape[0])
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    u = uniforms.to(probs.device, probs.dtype)
    if sampling.top_p >= 1:
        return _inverse_cdf(probs, u)
    k = min(TOP_P_CANDIDATES, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)  # sorted, descending
    tokens = order.gather(-1, _inverse_cdf(_nucleus(top, sampling.top_p), u).unsqueeze(-1)).squeeze(-1)
    wide = (top.sum(dim=-1) < sampling.top_p).nonzero().flatten()  # nucleus not inside the candidates
    if len(wide):
        sorted_probs, full_order = probs[wide].sort(dim=-1, descending=True, stable=True)
        picks = _inverse_cdf(_nucleus(sorted_probs, sampling.top_p), u[wide])
        tokens[wide] = full_order.gather(-1, picks.unsqueeze(-1)).squeeze(-1)
    return tokens


def _nucleus(sorted_probs, top_p: float):
    """Zero the tokens (sorted descending) whose preceding mass already reaches ``top_p``."""
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    return sorted_probs.masked_fill(mass_before >= top_p, 0.0)


def _inverse_cdf(probs, u):
    """Index of the first column whose cumulative mass exceeds ``u`` times the row total."""
    import torch

    cdf = probs.cumsum(dim=-1)
    pick = (cdf <= u.unsqueeze(-1) * cdf[:, -1:]).sum(dim=-1)
    last_nonzero = probs.shape[-1] - 1 - (probs.flip(-1) > 0).int().argmax(dim=-1)
    return torch.minimum(pick, last_nonzero)


def _stop_ids(model, tokenizer) -> set[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise RSPOError("the tokenizer and the model's generation_config define no eos token; cannot stop responses")
    return ids


# --------------------------------------------------------------------------- transformers backend


def prompt_token_ids(tokenizer, prompts: Sequence[str], max_prompt_length: int | None) -> list[list[int]]:
    """Chat-templated prompt token ids, the end kept (the same formatting the log-prob step uses)."""
    out = [encode_prompt(tokenizer, p, max_length=max_prompt_length) for p in prompts]
    for i, ids in enumerate(out):
        if not ids:
            raise RSPOError(f"prompt {i} encodes to no tokens")
    return out


def generation_batches(encoded: Sequence[Sequence[int]], batch_size: int, shard: Shard | None = None) -> list[list[int]]:
    """Prompt indices in batches of ``batch_size``, longest prompt first (fewer pad tokens per batch,
    and an out-of-memory shows at once); with ``shard`` only that shard's batches of this order of
    ALL prompts, so a batch holds the same prompts whatever the shard count (:mod:`rspo.sharding`)."""
    from rspo.sharding import longest_first_batches, select

    return select(longest_first_batches([len(ids) for ids in encoded], batch_size), shard)


def generate_with_model(model, tokenizer, prompt_ids: Sequence[str], prompts: Sequence[str],
                        cfg: GenerateConfig, progress: bool = True,
                        shard: Shard | None = None) -> list[list[Completion] | None]:
    """K completions per prompt with an already-loaded ``AutoModelForCausalLM`` (see module doc);
    with ``shard``, None for the prompts outside its batches (:func:`generation_batches`)."""
    from tqdm.auto import tqdm

    check_config(cfg)
    if len(set(prompt_ids)) != len(prompt_ids):
        raise RSPOError("prompt ids must be unique (they seed the samples)")
    encoded = prompt_token_ids(tokenizer, prompts, cfg.max_prompt_length)
    batches = generation_batches(encoded, cfg.batch_size, shard)  # results do not depend on the batching
    results: list[list[Completion] | None] = [None] * len(prompts)
    bar = tqdm(total=sum(map(len, batches)), desc="generate", unit="prompt", disable=not progress)
    for batch in batches:
        outs = _generate_batch(model, tokenizer, [encoded[i] for i in batch], [prompt_ids[i] for i in batch], cfg)
        for i, out in zip(batch, outs, strict=True):
            results[i] = out
        bar.update(len(batch))
    bar.close()
    return results


def _forward_kwargs(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def _generate_batch(model, tokenizer, encoded: list[list[int]], prompt_ids: list[str],
                    cfg: GenerateConfig) -> list[list[Completion]]:
    """Decode one left-padded batch: prefill once per prompt, repeat the cache K times, then one
    token per step for every unfinished row; finished rows leave the batch."""
    import torch

    s = cfg.sampling
    k = s.n
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = torch.tensor(sorted(_stop_ids(model, tokenizer)), device=device)
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for r, ids in enumerate(encoded):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    accepted = _forward_kwargs(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
    use_positions = "position_ids" in accepted
    cache_name = "cache" if "cache" in accepted else "past_key_values"  # renamed during transformers 5.x

    # rows are (prompt, sample) in prompt-major order; each row has its own generator (seeded by stream_seed)
    generators = [torch.Generator().manual_seed(stream_seed(s, pid, j)) for pid in prompt_ids for j in range(k)]
    rows = len(generators)
    tokens: list[list[int]] = [[] for _ in range(rows)]
    finished = [False] * rows
    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=mask, use_cache=True,
                    **({"position_ids": positions} if use_positions else {}), **extra)
        cache = getattr(out, cache_name)
        logits = out.logits[:, -1, :]
        if k > 1:
            cache.batch_repeat_interleave(k)
            logits = logits.repeat_interleave(k, dim=0)
            mask = mask.repeat_interleave(k, dim=0)
            positions = positions.repeat_interleave(k, dim=0)
        active = list(range(rows))  # row index of each line of the current batch
        for _ in range(s.max_new_tokens):
            uniforms = torch.stack([torch.rand((), generator=generators[r]) for r in active])
            next_tokens = sample_next_token(logits, s, uniforms)
            is_stop = torch.isin(next_tokens, stop).tolist()
            for line, r in enumerate(active):
                tokens[r].append(int(next_tokens[line]))
                finished[r] = bool(is_stop[line])
            keep = [line for line, r in enumerate(active) if not finished[r]]
            if not keep:
                break
            if len(keep) < len(active):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                next_tokens, mask, positions = next_tokens[index], mask[index], positions[index]
                active = [active[line] for line in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            out = model(input_ids=next_tokens[:, None], attention_mask=mask, use_cache=True, **{cache_name: cache},
                        **({"position_ids": positions} if use_positions else {}), **extra)
            logits = out.logits[:, -1, :]
    completions = []
    for r in range(rows):
        toks = tokens[r]
        body = toks[:-1] if finished[r] else toks
        completions.append(Completion(
            text=tokenizer.decode(body, skip_special_tokens=True),
            num_tokens=len(toks),
            finish_reason="stop" if finished[r] else "length",
            token_ids=tuple(toks),
        ))
    return [completions[i * k:(i + 1) * k] for i in range(len(encoded))]


# --------------------------------------------------------------------------- vllm backend


def import_vllm():
    """``import vllm``, or a clear RSPOError when it is not installed."""
    try:
        import vllm
    except ImportError:
        raise RSPOError(VLLM_MISSING) from None
    return vllm


def _vllm_dtype(name: str) -> str:
    from rspo.models import resolve_dtype

    return str(resolve_dtype(name)).removeprefix("torch.")


def generate_vllm(model_ref: str, prompts: Sequence[str], cfg: GenerateConfig,
                  shard: Shard | None = None) -> list[list[Completion] | None]:
    """K completions per prompt with vLLM (needs a GPU): one request per prompt with ``n=K``, or with
    ``seeding: passes`` K passes over the prompts with ``n=1`` and the pass's seed. With ``shard`` only
    the prompts of its batches (:func:`generation_batches`), None for the others."""
    vllm = import_vllm()
    from rspo.models import load_tokenizer, resolve_model

    check_config(cfg)
    s = cfg.sampling
    path, revision = resolve_model(model_ref, "model")
    pinned = {"revision": revision, "tokenizer_revision": revision} if revision else {}
    tokenizer = load_tokenizer(model_ref, padding_side="left")
    encoded = prompt_token_ids(tokenizer, prompts, cfg.max_prompt_length)
    chosen = sorted(i for batch in generation_batches(encoded, cfg.batch_size, shard) for i in batch)
    llm = vllm.LLM(model=path, tokenizer=path, tensor_parallel_size=cfg.tensor_parallel_size,
                   dtype=_vllm_dtype(cfg.dtype), gpu_memory_utilization=cfg.gpu_memory_utilization, seed=s.seed,
                   **pinned)
    requests = [{"prompt_token_ids": encoded[i]} for i in chosen]

    def run(n: int, seed: int) -> list:
        params = vllm.SamplingParams(n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens,
                                     seed=seed)
        outputs = llm.generate(requests, params, use_tqdm=True)
        if len(outputs) != len(chosen):
            raise RSPOError(f"vllm returned {len(outputs)} results for {len(chosen)} prompts")
        samples = [sorted(request.outputs, key=lambda o: o.index) for request in outputs]
        for i, got in zip(chosen, samples, strict=True):
            if len(got) != n:
                raise RSPOError(f"vllm returned {len(got)} samples for prompt {i}, expected n={n}")
        return samples

    if s.seeding == "passes":
        passes = [run(1, pass_seed(s.seed, k)) for k in range(s.n)]
        per_prompt = [[passes[k][j][0] for k in range(s.n)] for j in range(len(chosen))]
    else:
        per_prompt = run(s.n, s.seed)
    results: list[list[Completion] | None] = [None] * len(prompts)
    for i, samples in zip(chosen, per_prompt, strict=True):
        row = []
        for k, o in enumerate(samples):
            if o.finish_reason not in FINISH_REASONS:
                raise RSPOError(f"vllm finished prompt {i} sample {k} with reason {o.finish_reason!r}")
            ids = tuple(int(t) for t in o.token_ids)
            row.append(Completion(text=o.text, num_tokens=len(ids), finish_reason=o.finish_reason, token_ids=ids))
        results[i] = row
    return results
