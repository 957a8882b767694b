"""Prompt formatting shared by generation and log-prob scoring.

Both ``rspo generate`` and ``rspo logps``/``rspo train`` format a prompt with this one function,
so the tokens a response is scored after are exactly the tokens it was sampled after.

The policy's tokenizer must have a chat template: :func:`rspo.models.load_tokenizer` rejects one
without (:func:`require_chat_template`) before any model is loaded, since formatting raw text
instead would silently change what the policy is trained on. Reward models may lack one; they use
:func:`format_prompt`'s documented fallback.

Prompts longer than a prompt budget keep their END (:func:`encode_prompt`, the authors' side);
:func:`count_over_budget` counts them for the steps that truncate.
"""

from __future__ import annotations

from collections.abc import Sequence

from rspo.errors import RSPOError


def require_chat_template(tokenizer, ref: str) -> None:
    """Raise :class:`RSPOError` (one line naming ``ref``) when ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise RSPOError(
            f"the tokenizer of {ref!r} has no chat template: rspo formats every prompt as a user turn of the "
            "policy's chat template (as the authors do). Use a chat/instruct model, or add a `chat_template` "
            "to its tokenizer_config.json"
        )


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The chat-templated prompt string up to and including the assistant turn's opening.

    Uses ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``. A tokenizer without a
    chat template (a reward model's; never the policy's, see :func:`require_chat_template`) gets
    the raw prompt followed by a newline.
    """
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt + "\n"


def encode_prompt(tokenizer, prompt: str, system: str | None = None, max_length: int | None = None) -> list[int]:
    """Token ids of the formatted prompt, keeping the END when longer than ``max_length``
    (the authors' truncation side for prompts)."""
    ids = tokenizer(format_prompt(tokenizer, prompt, system), add_special_tokens=False)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[-max_length:]
    return ids


def count_over_budget(tokenizer, prompts: Sequence[str], max_length: int) -> int:
    """How many ``prompts`` are longer than ``max_length`` tokens once formatted (the steps that
    truncate to a prompt budget log this count)."""
    return sum(len(encode_prompt(tokenizer, p)) > max_length for p in prompts)
