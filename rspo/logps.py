"""Sequence log-probs of responses: tokenization, truncation, masking and batched scoring.

One code path serves both the log-prob cache step (``rspo logps``: log pi_t and log mu of every
chosen/rejected response, computed once) and the trainer (log pi_theta inside the loss), so the
numbers the cache stores and the numbers the trainer computes come from the same tokens:

* the prompt is formatted with :func:`rspo.chat.encode_prompt` (the model's chat template, exactly
  as generation formats it; no extra BOS);
* the response is the token ids generation SAMPLED (``token_ids`` of the responses table, carried
  by the pairs as ``chosen_token_ids`` / ``rejected_token_ids``), scored as they are: a response
  that ended with EOS has it among its ids (it COUNTS as a response token) and no second one is
  added; a response cut at ``max_new_tokens`` has no EOS and gets none;
* a response without ids (a text from an external file) is tokenized jointly with the prompt and
  split at the prompt boundary (:func:`response_ids_from_text`), and the tokenizer's EOS is appended,
  as TRL's ``DPOTrainer.tokenize_row`` (the authors' trainer) does;
* truncation is ``tokenize_row``'s, applied to a group of responses sharing a prompt (the chosen and
  rejected of a pair): if ``prompt + longest response > max_length`` the prompt keeps its last
  ``max_prompt_length`` tokens; if still too long, every response of the group is cut to its first
  ``max_length - max_prompt_length`` tokens (a cut response loses its EOS);
* labels are the input ids with prompt and padding positions set to -100; batches are right-padded;
  ``log p(y | x) = sum_t log softmax(logits_{t-1})[y_t]`` over the labelled positions.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from rspo.sharding import Shard

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_warned_boundary = False  # one warning per process when a text response straddles the prompt boundary


@dataclass(frozen=True)
class Encoded:
    """One prompt + response token sequence; ``input_ids[prompt_len:]`` is the response (+ EOS)."""

    input_ids: tuple[int, ...]
    prompt_len: int

    @property
    def num_response_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_len


def response_ids_from_text(tokenizer, prompt_text: str, prompt_ids: Sequence[int], response: str) -> list[int]:
    """The ids of a response TEXT as it follows ``prompt_text`` (whose ids are ``prompt_ids``).

    The authors' (TRL's) way: tokenize ``prompt_text + response`` jointly and take what follows the
    prompt's ids, so a SentencePiece tokenizer does not prepend its word-start marker to the response
    as it does to a text encoded alone. When a token straddles the boundary (the joint encoding does
    not start with ``prompt_ids``; TRL then moves the boundary and alters the prompt) the response is
    encoded alone instead, so that the prompt keeps generation's ids; a warning says so once.
    """
    global _warned_boundary
    full = tokenizer(prompt_text + response, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    if list(full[:n]) == list(prompt_ids):
        return list(full[n:])
    if not _warned_boundary:
        _warned_boundary = True
        log.warning("a response text merges with the end of its prompt when tokenized jointly; such responses "
                    "are tokenized on their own (responses with sampled token ids are not affected)")
    return list(tokenizer(response, add_special_tokens=False)["input_ids"])


def _check_ids(tokenizer, ids: Sequence[int]) -> list[int]:
    from rspo.artifacts import ArtifactError

    n = len(tokenizer)
    bad = [t for t in ids if type(t) is not int or not 0 <= t < n]
    if bad:
        raise ArtifactError(f"sampled token id {bad[0]!r} is not one of the tokenizer's {n} ids: token ids from "
                            f"another tokenizer?")
    return list(ids)


def encode_group(
    tokenizer,
    prompt: str,
    responses: Sequence[str],
    *,
    max_length: int,
    max_prompt_length: int,
    token_ids: Sequence[Sequence[int] | None] | None = None,
) -> list[Encoded]:
    """Tokenize ``responses`` after one chat-formatted ``prompt`` with the authors' truncation rule.

    ``token_ids[k]`` (when given and not None) are the ids generation sampled for response k: they are
    scored exactly, with no EOS added; a response without ids is encoded from its text
    (:func:`response_ids_from_text`) with the tokenizer's EOS appended. The truncation rule is decided
    once for the whole group (TRL's ``longer_response_length``), so the chosen and rejected of a pair
    are truncated together; see the module docstring.
    """
    from rspo.chat import encode_prompt, format_prompt

    if not 0 < max_prompt_length < max_length:
        raise ValueError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length} and {max_length}")
    if token_ids is not None and len(token_ids) != len(responses):
        raise ValueError(f"{len(token_ids)} token id lists for {len(responses)} responses")
    prompt_ids = encode_prompt(tokenizer, prompt)
    prompt_text = None
    resp_ids = []
    for k, text in enumerate(responses):
        ids = None if token_ids is None else token_ids[k]
        if ids is not None:
            resp_ids.append(_check_ids(tokenizer, ids))
            continue
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token (it is appended to every response given as text)")
        if prompt_text is None:
            prompt_text = format_prompt(tokenizer, prompt)
        resp_ids.append(response_ids_from_text(tokenizer, prompt_text, prompt_ids, text) + [tokenizer.eos_token_id])
    longest = max((len(r) for r in resp_ids), default=0)
    if len(prompt_ids) + longest > max_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if len(prompt_ids) + longest > max_length:
        resp_ids = [r[: max_length - max_prompt_length] for r in resp_ids]
    return [Encoded(tuple(prompt_ids) + tuple(r), len(prompt_ids)) for r in resp_ids]


def collate(seqs: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding)."""
    import torch

    width = max(len(s.input_ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, s.prompt_len : n] = ids[i, s.prompt_len : n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sequence_logps(
    model, batch: dict[str, torch.Tensor], *, chunk_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the labelled tokens of each row, and their counts: two (N,) tensors.

    ``batch`` holds right-padded ``input_ids``, ``attention_mask`` and ``labels`` (see
    :func:`collate`) on the model's device. The output layer runs only from the first position that
    predicts a response token (``logits_to_keep``, where the model's forward takes it), and the
    log-softmax is taken in fp32 (fp64 for an fp64 model) at labelled positions only.

    ``chunk_size`` > 0 (``TrainConfig.logps_chunk_size``): the model's output layer is skipped and
    :func:`rspo.token_logps.token_logps` computes the labelled tokens' log-probs from the final hidden
    states ``chunk_size`` tokens at a time (no full-vocabulary tensor of all tokens, also in the
    backward); equal to the unchunked computation up to rounding. 0, or a model that path does not
    support (:func:`rspo.token_logps.output_layer`; a warning says why, once), computes the logits of
    all kept positions at once. Differentiable w.r.t. the model.
    """
    import torch

    labels = batch["labels"]
    width = labels.shape[1]
    kwargs = {}
    if _takes_logits_to_keep(model):
        cols = (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero()
        kwargs["logits_to_keep"] = width - (int(cols[0]) if len(cols) else 0)
    layer = _chunkable_output_layer(model) if chunk_size > 0 else None
    if layer is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **kwargs)
        states = out.logits  # positions width - k .. width - 1
    else:  # the output layer's input (the final hidden states of the kept positions); it then runs on none
        states = _hidden_before(layer.module, model, input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"], use_cache=False, **kwargs)
    first = width - states.shape[1]
    targets = labels[:, first + 1 :]  # the token each kept position (but the last) predicts
    keep = targets != IGNORE_INDEX
    rows = keep.nonzero(as_tuple=True)[0]
    if layer is None:
        from rspo.token_logps import softmax_dtype

        picked = states[:, :-1][keep]  # (tokens, vocab)
        picked = picked.to(softmax_dtype(picked.dtype))
        token_logps = picked.log_softmax(dim=-1).gather(-1, targets[keep].unsqueeze(-1)).squeeze(-1)
    else:
        from rspo.token_logps import token_logps as chunked

        token_logps = chunked(states[:, :-1][keep], layer, targets[keep], chunk_size)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=states.device)
    return sums.index_add(0, rows, token_logps), keep.sum(dim=1)


def _chunkable_output_layer(model):
    """:func:`rspo.token_logps.output_layer`, or None with a warning (once per reason) why not."""
    from rspo.token_logps import output_layer

    layer, reason = output_layer(model)
    if layer is None:
        _warn_unchunked(reason)
    return layer


@functools.cache
def _warn_unchunked(reason: str) -> None:
    log.warning("log-probs are computed unchunked (full logits of all response tokens): %s", reason)


def _hidden_before(module, model, **inputs) -> torch.Tensor:
    """Run ``model(**inputs)`` with ``module`` fed an empty slice; return the input ``module`` was given."""
    seen = []

    def swap(_module, args):
        seen.append(args[0])
        return (args[0][:, :0], *args[1:])

    handle = module.register_forward_pre_hook(swap)
    try:
        model(**inputs)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the output layer ran {len(seen)} times in one forward, expected once")
    return seen[0]


def _takes_logits_to_keep(model) -> bool:
    import inspect

    inner = getattr(model, "module", model)  # DDP / DeepSpeed / FSDP wrappers pass keyword arguments on
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- precision


def resolve_precision(precision: str) -> str:
    """``TrainConfig.precision`` -> accelerate's ``mixed_precision``: ``auto`` = bf16 on GPU, fp32 on CPU."""
    import torch

    if precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    if precision in ("fp32", "no"):
        return "no"
    if precision == "bf16":
        return "bf16"
    from rspo.config import ConfigError

    raise ConfigError(f"unknown precision {precision!r}; allowed: auto, fp32, bf16")


def autocast(mixed_precision: str, device) -> contextlib.AbstractContextManager:
    """The forward context the trainer's Accelerator uses: bf16 autocast over fp32 weights, or nothing."""
    import torch

    if mixed_precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------- the cache step


def score(
    model,
    seqs: Sequence[Encoded],
    *,
    pad_id: int,
    batch_size: int,
    mixed_precision: str = "no",
    desc: str = "logps",
    shard: Shard | None = None,
    chunk_size: int = 0,
) -> tuple[list[float], list[int]]:
    """``sequence_logps`` of many sequences without gradients: (sums, counts) in input order.

    Sequences are scored longest first (little padding; an out-of-memory shows in the first batch).
    With ``shard`` only that shard's batches of this order are scored (:mod:`rspo.sharding`); the
    other entries stay None. ``chunk_size``: see :func:`sequence_logps`.
    """
    import torch
    from tqdm import tqdm

    from rspo.sharding import longest_first_batches, select

    device = next(model.parameters()).device
    batches = select(longest_first_batches([len(s.input_ids) for s in seqs], batch_size), shard)
    sums: list = [None] * len(seqs)
    counts: list = [None] * len(seqs)
    with torch.no_grad(), tqdm(total=sum(map(len, batches)), desc=desc, unit="seq") as bar:
        for idx in batches:
            batch = {k: v.to(device) for k, v in collate([seqs[i] for i in idx], pad_id).items()}
            with autocast(mixed_precision, device):
                s, c = sequence_logps(model, batch, chunk_size=chunk_size)
            for i, si, ci in zip(idx, s.tolist(), c.tolist()):
                sums[i], counts[i] = si, ci
            bar.update(len(idx))
    return sums, counts


def pair_token_ids(row: dict) -> list[Sequence[int] | None]:
    """``[chosen ids, rejected ids]`` of a ``pairs`` row (None where the row has none: text only)."""
    return [row.get("chosen_token_ids"), row.get("rejected_token_ids")]


def encode_pairs(tokenizer, rows: Sequence[dict], *, max_length: int, max_prompt_length: int) -> list[Encoded]:
    """``[chosen_0, rejected_0, chosen_1, rejected_1, ...]`` of ``pairs`` rows, truncated pairwise;
    the sampled ids where the rows carry them (``chosen_token_ids`` / ``rejected_token_ids``)."""
    seqs: list[Encoded] = []
    for row in rows:
        seqs.extend(
            encode_group(
                tokenizer,
                row["prompt"],
                [row["chosen"], row["rejected"]],
                max_length=max_length,
                max_prompt_length=max_prompt_length,
                token_ids=pair_token_ids(row),
            )
        )
    return seqs


def pair_logps(
    model,
    tokenizer,
    rows: Sequence[dict],
    *,
    max_length: int,
    max_prompt_length: int,
    batch_size: int,
    mixed_precision: str = "no",
    desc: str = "logps",
) -> list[dict[str, float | int]]:
    """Per ``pairs`` row: ``logp_chosen``, ``logp_rejected`` (sums) and ``chosen_tokens``, ``rejected_tokens``."""
    seqs = encode_pairs(tokenizer, rows, max_length=max_length, max_prompt_length=max_prompt_length)
    sums, counts = score(
        model, seqs, pad_id=pad_token_id(tokenizer), batch_size=batch_size, mixed_precision=mixed_precision, desc=desc
    )
    return [
        {
            "logp_chosen": sums[2 * i],
            "logp_rejected": sums[2 * i + 1],
            "chosen_tokens": counts[2 * i],
            "rejected_tokens": counts[2 * i + 1],
        }
        for i in range(len(rows))
    ]


def pad_token_id(tokenizer) -> int:
    """The id used for padding (any id works: padded positions are masked); EOS when there is no pad."""
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pid
