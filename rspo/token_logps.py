"""Per-token log-probs from final hidden states, in chunks of tokens: no full-vocabulary tensor of all tokens.

``log p(y_t) = z_t[y_t] - logsumexp(z_t)`` with ``z_t = cap * tanh((W h_t + b) / cap)`` (``cap`` =
Gemma-2's ``final_logit_softcapping``; without it ``z_t = W h_t + b``), for T tokens with hidden states
``h`` (T, H), the output layer's weight ``W`` (V, H) and bias ``b``. :class:`ChunkedTokenLogps` takes the
tokens ``chunk_size`` at a time: the forward keeps only each token's ``logsumexp`` (T floats), the
backward recomputes a chunk's logits and applies

    d log p(y_t) / d z_t = onehot(y_t) - softmax(z_t)

so at most one chunk's (chunk_size, V) float32 logits exist at a time, with or without the gradient.
The matmuls run in the dtype the model's own output layer would use (the autocast dtype under
autocast, else the weight's), the softmax in float32, as the unchunked path does.

:func:`output_layer` says whether a model's logits are exactly ``lm_head(last hidden state)`` up to a
transform this module applies (see ``POST_TRANSFORMS``); if not it gives the reason and
:func:`rspo.logps.sequence_logps` uses the unchunked computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# model_type -> what the CausalLM forward applies to lm_head's output (checked in transformers 5.24's
# modeling_<type>.py): nothing, or Gemma-2's final_logit_softcapping (logits = cap * tanh(logits / cap)).
POST_TRANSFORMS = {
    "llama": None,
    "mistral": None,
    "mixtral": None,
    "qwen2": None,
    "qwen3": None,
    "phi3": None,
    "gemma": None,
    "gemma2": "final_logit_softcapping",
}


@dataclass(frozen=True)
class OutputLayer:
    """The output layer of a supported causal LM: ``logits = softcap(module(hidden))``."""

    module: torch.nn.Linear
    softcap: float | None


def output_layer(model) -> tuple[OutputLayer | None, str]:
    """``(layer, "")`` if the chunked path can compute ``model``'s log-probs, else ``(None, reason)``.

    ``model`` may be wrapped (DDP, DeepSpeed: its ``.module``). Unsupported: an architecture not in
    ``POST_TRANSFORMS`` (its logits may be scaled or capped in ways not reproduced here), an output layer
    that is not a plain ``nn.Linear`` (e.g. a PEFT adapter), and DeepSpeed ZeRO-3 and FSDP (they shard
    the weight outside the layer's own forward, and the chunks read it after the model's forward and in
    the backward).
    """
    inner = getattr(model, "module", model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in POST_TRANSFORMS:
        return None, (
            f"model type {model_type!r} is not one whose output transform rspo.token_logps reproduces "
            f"({', '.join(POST_TRANSFORMS)})"
        )
    getter = getattr(inner, "get_output_embeddings", None)
    module = getter() if getter is not None else None
    if type(module) is not torch.nn.Linear:
        return None, f"the output layer is a {type(module).__name__}, not a torch.nn.Linear"
    if hasattr(module.weight, "ds_id"):
        return None, "the output layer's weight is partitioned by DeepSpeed ZeRO-3 outside its forward"
    if type(module.weight).__name__ == "DTensor" or any(
        type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()
    ):
        return None, "under FSDP the output layer's weight is sharded outside its forward"
    transform = POST_TRANSFORMS[model_type]
    softcap = getattr(config, transform, None) if transform else None
    return OutputLayer(module, float(softcap) if softcap else None), ""


def softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the log-softmax: float32, or float64 for a float64 model (as precise as its logits)."""
    return torch.promote_types(dtype, torch.float32)


def _logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """Logits of one chunk in :func:`softmax_dtype` (``h``, ``weight``, ``bias`` already in the compute dtype)."""
    z = F.linear(h, weight, bias)
    z = z.to(softmax_dtype(z.dtype))
    if softcap is not None:
        z = z.div_(softcap).tanh_().mul_(softcap)
    return z


class ChunkedTokenLogps(torch.autograd.Function):
    """``log softmax(z_t)[y_t]`` of T tokens, ``chunk_size`` at a time; saves only each token's logsumexp."""

    @staticmethod
    def forward(
        ctx, hidden, weight, bias, targets, chunk_size: int, softcap: float | None, dtype: torch.dtype
    ):
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        n = hidden.shape[0]
        out = torch.empty(n, dtype=softmax_dtype(dtype), device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, n, chunk_size):
            z = _logits(hidden[s : s + chunk_size].to(dtype), w, b, softcap)
            out[s : s + chunk_size] = z.gather(1, targets[s : s + chunk_size, None]).squeeze(1)
            top = z.amax(dim=-1, keepdim=True)  # logsumexp in place: no second (chunk, V) tensor
            lse[s : s + chunk_size] = z.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(1))
        out.sub_(lse)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size, ctx.softcap, ctx.dtype = chunk_size, softcap, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        chunk_size, softcap, dtype = ctx.chunk_size, ctx.softcap, ctx.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        acc = softmax_dtype(dtype)  # weight and bias gradients are summed over chunks in this dtype
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        grad_out = grad_out.to(acc)
        for s in range(0, hidden.shape[0], chunk_size):
            h = hidden[s : s + chunk_size].to(dtype)
            g = grad_out[s : s + chunk_size, None]
            z = _logits(h, w, b, softcap)
            dcap = 1 - (z / softcap).square() if softcap is not None else None  # d(capped) / d(raw logit)
            gz = z.sub_(lse[s : s + chunk_size, None]).exp_().mul_(-g)  # -g * softmax(z)
            gz.scatter_add_(1, targets[s : s + chunk_size, None], g)  # + g * onehot(y)
            if dcap is not None:
                gz.mul_(dcap)
            if need_b:
                grad_b += gz.sum(0)
            gz = gz.to(dtype)
            if need_h:
                grad_h[s : s + chunk_size] = gz @ w
            if need_w:
                if dtype == acc:
                    grad_w.addmm_(gz.t(), h)
                else:  # bf16 / fp16 matmul, as the layer's own backward under autocast, summed in float32
                    grad_w += gz.t() @ h
        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def token_logps(
    hidden: torch.Tensor,
    layer: OutputLayer,
    targets: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """``log softmax(softcap(layer(hidden)))[targets]`` of T tokens, ``chunk_size`` tokens at a time.

    ``hidden`` (T, H) are the final hidden states (after the model's final norm) of the positions that
    predict ``targets`` (T,). Returns (T,) float32 (float64 for a float64 model). Differentiable w.r.t.
    ``hidden`` and the layer's weight and bias. Under autocast the matmuls run in the autocast dtype, as
    the layer's own forward would.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    weight, bias = layer.module.weight, layer.module.bias
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    with torch.autocast(device_type=device_type, enabled=False):
        return ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size, layer.softcap, dtype)
