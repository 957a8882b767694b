"""Errors that the CLI reports as one line (no stack trace)."""


class RSPOError(RuntimeError):
    """A user-facing failure: a missing model, an unreachable hub, a diverged loss, ..."""


class HubUnavailableError(RSPOError):
    """A Hugging Face hub id was asked for while the hub is unreachable or HF_HUB_OFFLINE=1."""
