"""Chunked per-token log-probs (rspo.token_logps) equal the unchunked log-softmax: values and gradients.

Equality is checked in float64, where both computations are exact to ~1e-15 relative, so the
tolerance (64 float64 ulps of the largest magnitude involved) separates rounding from any error of
the chunked algebra (a wrong term is >= 1e-3 here). The float32 check allows the chunked result the
float32 error the unchunked computation itself has against float64, plus an ulp.
"""

from __future__ import annotations

import copy
import logging

import pytest

torch = pytest.importorskip("torch")

from rspo.logps import Encoded, collate, sequence_logps  # noqa: E402
from rspo.token_logps import OutputLayer, output_layer, token_logps  # noqa: E402

EPS64 = torch.finfo(torch.float64).eps


def _reference(hidden, weight, bias, targets, softcap):
    """The unchunked computation: full logits of all tokens, log-softmax, gather."""
    z = torch.nn.functional.linear(hidden, weight, bias)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def _tol(*tensors):
    return 64 * EPS64 * max(t.abs().max().item() for t in tensors)


def _layer(vocab, hidden, bias, dtype, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(hidden, vocab, bias=bias, dtype=dtype)
    torch.nn.init.normal_(lin.weight, std=1.0)
    if bias:
        torch.nn.init.normal_(lin.bias, std=1.0)
    return lin


@pytest.mark.parametrize("chunk", [1, 3, 10, 64])  # 3 does not divide 10 tokens; 64 > tokens
@pytest.mark.parametrize("bias,softcap", [(False, None), (True, None), (True, 4.0)])
def test_chunks_equal_full_log_softmax_values_and_gradients(chunk, bias, softcap):
    lin = _layer(vocab=37, hidden=8, bias=bias, dtype=torch.float64)
    hidden = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (10,))
    upstream = torch.randn(10, dtype=torch.float64)  # a different weight per token, as per-row sums get

    ref = _reference(hidden, lin.weight, lin.bias, targets, softcap)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), [hidden, *lin.parameters()])
    got = token_logps(hidden, OutputLayer(lin, softcap), targets, chunk)
    got_grads = torch.autograd.grad((got * upstream).sum(), [hidden, *lin.parameters()])

    assert got.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=0, atol=_tol(ref))
    for g, r in zip(got_grads, ref_grads, strict=True):  # hidden states, weight (and bias)
        assert g.abs().max() > 0
        assert torch.allclose(g, r, rtol=0, atol=_tol(r))


def test_float32_chunks_are_as_accurate_as_the_unchunked_computation():
    lin = _layer(vocab=1000, hidden=32, bias=False, dtype=torch.float32)
    hidden = torch.randn(50, 32)
    targets = torch.randint(0, 1000, (50,))
    exact = _reference(hidden.double(), lin.weight.double(), None, targets, None)
    with torch.no_grad():
        full = _reference(hidden, lin.weight, None, targets, None)
        chunked = token_logps(hidden, OutputLayer(lin, None), targets, 7)
    assert chunked.dtype == torch.float32
    ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert (chunked.double() - exact).abs().max() <= 2 * (full.double() - exact).abs().max() + ulp


def test_autograd_gradcheck_through_chunks():
    """Finite differences of the backward's hand-written gradient (bias and soft-cap included)."""
    from rspo.token_logps import ChunkedTokenLogps

    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    assert torch.autograd.gradcheck(
        lambda h, w, b: ChunkedTokenLogps.apply(h, w, b, targets, 2, 3.0, torch.float64),
        (hidden, weight, bias),
    )


# --------------------------------------------------------------------------- whole models


def _batch(vocab, seed=0):
    """Four right-padded sequences of different prompt and response lengths."""
    gen = torch.Generator().manual_seed(seed)
    seqs = []
    for length, prompt in [(21, 5), (13, 8), (30, 4), (9, 6)]:
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        seqs.append(Encoded(tuple(ids), prompt))
    return collate(seqs, pad_id=0)


def _sums_and_grads(model, batch, chunk):
    model.zero_grad(set_to_none=True)
    sums, counts = sequence_logps(model, batch, chunk_size=chunk)
    weights = torch.linspace(-1.0, 2.0, len(sums), dtype=sums.dtype)  # per-row upstream gradients
    (sums * weights).sum().backward()
    return (
        sums.detach(),
        counts,
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
    )


def _lm_head_widths(model):
    """Record how many positions each forward feeds the output layer."""
    widths = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: widths.append(args[0].shape[1]))
    return widths


def _tiny(kind):
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
    )
    if kind == "llama":  # tied embeddings, as SmolLM2
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    return Gemma2ForCausalLM(Gemma2Config(**common, final_logit_softcapping=2.0))


@pytest.mark.parametrize("kind", ["llama", "gemma2"])
def test_sequence_logps_chunked_equals_unchunked_on_a_padded_batch(kind):
    model = _tiny(kind).double()
    batch = _batch(97)
    widths = _lm_head_widths(model)
    full, counts, full_grads = _sums_and_grads(model, batch, 0)
    assert widths[-1] > 0  # unchunked: the output layer ran on the kept positions
    assert counts.tolist() == [16, 5, 26, 3]
    for chunk in (1, 7, 4096):  # 7 divides none of the row lengths nor the 50 tokens
        sums, counts7, grads = _sums_and_grads(model, batch, chunk)
        assert widths[-1] == 0  # chunked: the output layer itself ran on no position
        assert counts7.tolist() == counts.tolist()
        assert sums.dtype == torch.float64
        assert torch.allclose(sums, full, rtol=0, atol=_tol(full))
        assert grads.keys() == full_grads.keys()
        for name, g in grads.items():
            assert torch.allclose(g, full_grads[name], rtol=0, atol=_tol(full_grads[name])), name
    if kind == "gemma2":  # the cap matters: without it the values differ
        capless = copy.deepcopy(model)
        capless.config.final_logit_softcapping = None
        assert not torch.allclose(sequence_logps(capless, batch, chunk_size=7)[0].detach(), full, atol=1e-3)


def test_hidden_state_gradients_reach_the_base_model_in_float32():
    """float32 (the training dtype on CPU): chunked and unchunked gradients agree to float32 rounding."""
    model = _tiny("llama")
    batch = _batch(97, seed=1)
    full, _, full_grads = _sums_and_grads(model, batch, 0)
    sums, _, grads = _sums_and_grads(model, batch, 5)
    eps = torch.finfo(torch.float32).eps
    # each sum adds <= 26 token log-probs of magnitude ~log(97): a few ulps of each
    assert torch.allclose(sums, full, rtol=0, atol=64 * eps * full.abs().max().item())
    for name, g in grads.items():
        assert torch.allclose(
            g, full_grads[name], rtol=0, atol=64 * eps * full_grads[name].abs().max().item()
        ), name
    assert grads["model.layers.0.self_attn.q_proj.weight"].abs().max() > 0


def test_bf16_autocast_chunks_match_the_unchunked_bf16_computation():
    """Under bf16 autocast both paths round each logit to bf16 once: the sums may differ by that rounding
    (2 bf16 ulps of the largest logit per token), the gradients by bf16 products summed in another order."""
    model = _tiny("llama")
    batch = _batch(97, seed=2)
    out = {}
    for chunk in (0, 5):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sums, counts = sequence_logps(model, batch, chunk_size=chunk)
        sums.sum().backward()
        out[chunk] = sums.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        zmax = model(input_ids=batch["input_ids"]).logits.abs().max().item()
    eps = torch.finfo(torch.bfloat16).eps
    assert out[5][0].dtype == torch.float32
    assert ((out[5][0] - out[0][0]).abs() <= counts * 2 * eps * zmax).all()
    for name, g in out[5][1].items():
        ref = out[0][1][name]
        assert (g - ref).abs().max() <= 2 * eps * ref.abs().max(), name


def test_unsupported_models_fall_back_to_the_unchunked_path_with_a_reason(caplog):
    model = _tiny("llama").double()
    batch = _batch(97)
    with torch.no_grad():
        full = sequence_logps(model, batch)[0]

    class Wrapper(torch.nn.Module):  # no config, no output layer: an unknown architecture
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            return self.inner(**kw)

    assert output_layer(Wrapper(model))[0] is None
    with caplog.at_level(logging.WARNING, logger="rspo.logps"), torch.no_grad():
        wrapped = sequence_logps(Wrapper(model), batch, chunk_size=8)[0]
    assert torch.equal(wrapped, full)
    assert "unchunked" in caplog.text and "model type None" in caplog.text

    zero3 = copy.deepcopy(model)
    zero3.lm_head.weight.ds_id = 0  # what DeepSpeed ZeRO-3 sets on the parameters it partitions
    layer, reason = output_layer(zero3)
    assert layer is None and "ZeRO-3" in reason
    layer, reason = output_layer(model)
    assert layer is not None and layer.module is model.lm_head and layer.softcap is None and reason == ""


def test_the_logps_step_and_the_trainer_use_train_logps_chunk_size(tmp_path, tiny_model_dir, monkeypatch):
    import rspo.logps
    from rspo.artifacts import read_table, write_table
    from rspo.commands.logps import cache_logps
    from rspo.config import TrainConfig
    from rspo.train import train

    seen = []
    real = rspo.logps.sequence_logps
    monkeypatch.setattr(rspo.logps, "sequence_logps", lambda m, b, *, chunk_size=0: seen.append(chunk_size)
                        or real(m, b, chunk_size=chunk_size))
    pair = {"prompt_id": "p0", "prompt": "List five fruits.", "chosen": "apple, banana, cherry, mango and pear",
            "rejected": "apple", "chosen_index": 0, "rejected_index": 1, "p_chosen": 0.6, "p_rejected": 0.4,
            "scores": [1.0, -1.0]}
    cfg = TrainConfig(logps_chunk_size=3, per_device_batch_size=1, checkpoint_every=0, learning_rate=1e-5)
    rows = cache_logps([pair], str(tiny_model_dir), str(tiny_model_dir), cfg)
    assert seen == [3]  # pi_0 = mu: one scoring pass
    write_table(tmp_path / "pairs_logps.jsonl", rows, "pairs_logps")
    train(cfg, pairs=tmp_path / "pairs_logps.jsonl", model=str(tiny_model_dir), out_dir=tmp_path / "model",
          log_path=tmp_path / "log.jsonl")
    assert seen == [3, 3]  # one optimizer step
    assert len(read_table(tmp_path / "log.jsonl", "train_log")) == 1


def test_a_negative_chunk_size_is_a_config_error():
    from rspo.config import ConfigError, TrainConfig
    from rspo.train import check_config

    check_config(TrainConfig(logps_chunk_size=0))
    with pytest.raises(ConfigError, match="logps_chunk_size"):
        check_config(TrainConfig(logps_chunk_size=-1))
