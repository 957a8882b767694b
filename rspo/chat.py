"""Prompt formatting shared by generation and log-prob scoring.

Both ``rspo generate`` and ``rspo logps``/``rspo train`` format a prompt with this one function,
so the tokens a response is scored after are exactly the tokens it was sampled after.
"""

from __future__ import annotations


def format_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The chat-templated prompt string up to and including the assistant turn's opening.

    Uses ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``; a tokenizer without
    a chat template gets the raw prompt followed by a newline.
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
