"""Loading models and tokenizers by local path or hub id, with a clear error offline.

A reference is a local folder (used as is) or a Hugging Face hub id. With ``HF_HUB_OFFLINE=1``, or
when the hub cannot be reached, a hub id that is not already in the local cache fails at once with
:class:`~rspo.errors.HubUnavailableError` naming the id, instead of a stack trace or a long retry.
"""

from __future__ import annotations

import os
from pathlib import Path

from rspo.errors import HubUnavailableError, RSPOError


def is_local(ref: str) -> bool:
    return Path(ref).expanduser().exists()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", ""
    ).lower() in {"1", "true", "yes"}


def check_reference(ref: str, what: str = "model") -> str:
    """Return ``ref`` if it is a local folder or loadable from the hub (cache); else raise clearly."""
    if not ref:
        raise RSPOError(f"no {what} given")
    if is_local(ref):
        return str(Path(ref).expanduser())
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") > 1
    if looks_like_path:
        raise RSPOError(f"{what} {ref!r}: no such local folder")
    if hub_offline():
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(ref, local_files_only=True)
        except Exception:
            raise HubUnavailableError(
                f"{what} {ref!r} is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
                f"cache. Download it where the hub is reachable (huggingface-cli download {ref}) or give a "
                f"local folder instead."
            ) from None
    return ref


def resolve_dtype(name: str = "auto"):
    """``auto`` = bf16 on a CUDA device, fp32 on CPU."""
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise RSPOError(f"unknown dtype {name!r}; allowed: auto, {', '.join(sorted(table))}")
    return table[name]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _wrap_hub_errors(ref: str, what: str, fn):
    try:
        return fn()
    except OSError as exc:  # transformers raises OSError for unreachable / missing repos
        msg = str(exc)
        if "offline" in msg.lower() or "connect" in msg.lower() or "hub" in msg.lower():
            raise HubUnavailableError(f"{what} {ref!r} could not be loaded from the hub: {msg.splitlines()[0]}") from None
        raise RSPOError(f"{what} {ref!r} could not be loaded: {msg.splitlines()[0]}") from None


def load_tokenizer(ref: str, padding_side: str = "left"):
    """Tokenizer with a pad token (eos when it has none) and the given padding side."""
    from transformers import AutoTokenizer

    path = check_reference(ref, "tokenizer")
    tok = _wrap_hub_errors(ref, "tokenizer", lambda: AutoTokenizer.from_pretrained(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(ref: str, dtype: str = "auto", device: str | None = None, trainable: bool = False):
    """``AutoModelForCausalLM`` on ``device`` (default: cuda if available), eval mode unless trainable."""
    from transformers import AutoModelForCausalLM

    path = check_reference(ref, "model")
    model = _wrap_hub_errors(
        ref, "model", lambda: AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype))
    )
    model.to(device or default_device())
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model
