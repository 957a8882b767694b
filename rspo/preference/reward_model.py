"""Reward-model judge: any ``AutoModelForSequenceClassification`` with one output (a Bradley-Terry
reward model such as Skywork-Reward or ArmoRM's backbone).

Each response is scored alone on the chat-templated conversation
``[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]``
(``tokenizer.apply_chat_template``; a tokenizer without a template gets
``rspo.chat.format_prompt(prompt) + response``), truncated from the LEFT to ``options.max_length``
tokens (default 4096) so the last token, where the reward is read, is always kept. Then

    M[i, j] = r_i - r_j        (Bradley-Terry: sigmoid(M[i, j]) = P(i beats j))

``JudgeConfig.beta`` is NOT applied: a Bradley-Terry reward difference already is a logit.
``options.scale`` (default 1) multiplies it for a reward model on another scale.
"""

from __future__ import annotations

import numpy as np

from rspo.errors import RSPOError
from rspo.preference.base import ScalarJudge

_OPTIONS = {"max_length", "scale", "dtype", "device"}


class RewardModelJudge(ScalarJudge):
    """``judge: {name: reward_model, model: PATH_OR_HUB_ID}``; options: ``max_length``, ``scale``,
    ``dtype`` (auto | fp32 | bf16 | fp16), ``device``."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.model:
            raise RSPOError("judge reward_model needs judge.model (a local folder or a hub id)")
        self.check_options(_OPTIONS)
        self.name = f"reward_model:{cfg.model}"
        self.max_length = int(cfg.options.get("max_length", 4096))
        self._model = None
        self._tokenizer = None

    @property
    def scale(self) -> float:
        return float(self.cfg.options.get("scale", 1.0))

    def settings(self) -> dict:
        return {"model": self.cfg.model, "max_length": self.max_length, "dtype": self.cfg.options.get("dtype", "auto")}

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            from rspo.models import (
                _wrap_hub_errors,
                check_reference,
                default_device,
                load_tokenizer,
                resolve_dtype,
            )

            path = check_reference(self.cfg.model, "reward model")
            tok = load_tokenizer(path, padding_side="right", chat_template=False)  # fallback: rspo.chat
            tok.truncation_side = "left"
            model = _wrap_hub_errors(
                self.cfg.model, "reward model",
                lambda: AutoModelForSequenceClassification.from_pretrained(
                    path, dtype=resolve_dtype(self.cfg.options.get("dtype", "auto"))
                ),
            )
            if model.config.num_labels != 1:
                raise RSPOError(
                    f"reward model {self.cfg.model!r} has {model.config.num_labels} outputs; a reward model has 1"
                )
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tok.pad_token_id
            model.to(self.cfg.options.get("device") or default_device()).eval().requires_grad_(False)
            self._model, self._tokenizer = model, tok
        return self._model, self._tokenizer

    def conversation(self, prompt: str, response: str) -> str:
        """The text the reward is read from (chat-templated prompt + response)."""
        _, tok = self._load()
        if getattr(tok, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return tok.apply_chat_template(messages, tokenize=False)
        from rspo.chat import format_prompt

        return format_prompt(tok, prompt) + response

    def score(self, prompts, responses):
        import torch

        model, tok = self._load()
        texts = [self.conversation(p, r) for p, r in zip(prompts, responses)]
        templated = bool(getattr(tok, "chat_template", None))  # the template writes its own special tokens
        order = sorted(range(len(texts)), key=lambda n: -len(texts[n]))
        out = np.zeros(len(texts), dtype=np.float64)
        size = max(1, self.cfg.batch_size)
        with torch.inference_mode():
            for start in range(0, len(order), size):
                picked = order[start : start + size]
                enc = tok(
                    [texts[n] for n in picked], return_tensors="pt", padding=True, truncation=True,
                    max_length=self.max_length, add_special_tokens=not templated,
                ).to(model.device)
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
                out[picked] = logits[:, 0].float().cpu().numpy()
        return out
