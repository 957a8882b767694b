"""rspo_loss against numbers worked out by hand (plain Python, math.exp), and its gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rspo.losses import (
    PAPER_SWEEP,
    REGULARIZER_PRESETS,
    REGULARIZER_TERMS,
    LossOutput,
    resolve_regularizer,
    rspo_loss,
)

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

# B = 2 pairs; column 0 = chosen y_w, column 1 = rejected y_l; SUMMED log-probs
POLICY = [[-10.0, -12.0], [-8.0, -9.5]]  # log pi_theta
LAST = [[-10.2, -11.9], [-8.1, -9.0]]  # log pi_t
REF = [[-10.5, -11.0], [-7.0, -9.5]]  # log mu
WIN = [[0.8, 0.3], [0.6, 0.45]]  # (p_w, p_l)
NLL = [2.0, 3.0]  # token-mean NLL of mu's samples under pi_theta

# a = policy - last = [[0.2, -0.1], [0.1, -0.5]]; with eta = 2: target = 2 (p - 0.5) = [[0.6, -0.4], [0.2, -0.1]]
# residual a - target = [[-0.4, 0.3], [-0.1, -0.4]]
# SPPO = mean_b 0.5 (r_w^2 + r_l^2) = (0.5 (0.16 + 0.09) + 0.5 (0.01 + 0.16)) / 2 = (0.125 + 0.085) / 2
SPPO_ETA2 = 0.105
# d = policy - ref = [[0.5, -1.0], [-1.0, 0.0]]
REVERSE_KL = (0.25 + 1.0) / 2 + (1.0 + 0.0) / 2  # mean_b d_w^2 + mean_b d_l^2 = 1.125
IS_FORWARD_KL = (math.exp(-0.5) + math.exp(1.0)) / 2 + (math.exp(1.0) + math.exp(0.0)) / 2  # exp(-d)
CHI2 = (math.exp(0.5) + math.exp(-1.0)) / 2 + (math.exp(-1.0) + math.exp(0.0)) / 2  # exp(d)
FORWARD_KL = (2.0 + 3.0) / 2

TERM_VALUES = {
    "reverse_kl": REVERSE_KL,
    "is_forward_kl": IS_FORWARD_KL,
    "chi2": CHI2,
    "forward_kl": FORWARD_KL,
}


def tensors(requires_grad: bool = False):
    policy = torch.tensor(POLICY, dtype=torch.float64, requires_grad=requires_grad)
    last, ref, win = (torch.tensor(x, dtype=torch.float64) for x in (LAST, REF, WIN))
    nll = torch.tensor(NLL, dtype=torch.float64, requires_grad=requires_grad)
    return policy, last, ref, win, nll


def test_paper_presets_and_constants():
    assert REGULARIZER_TERMS == ("reverse_kl", "is_forward_kl", "chi2", "forward_kl")
    assert {k: dict(v) for k, v in REGULARIZER_PRESETS.items()} == {
        "none": {},
        "reverse_kl": {"reverse_kl": 0.5},
        "is_forward_kl": {"is_forward_kl": 0.1},
        "chi2": {"chi2": 0.1},
        "forward_kl": {"forward_kl": 0.1},
        "mixed": {"is_forward_kl": 0.1, "reverse_kl": 0.5},  # sppo_forward1reverse5 at reg_coef 0.1
    }
    assert PAPER_SWEEP == ("none", "reverse_kl", "forward_kl", "is_forward_kl", "chi2", "mixed")
    assert set(PAPER_SWEEP) <= set(REGULARIZER_PRESETS)


def test_sppo_term_and_logging_fields_by_hand():
    policy, last, ref, win, _ = tensors()
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer="none")
    assert isinstance(out, LossOutput)
    assert out[0] is out.loss
    assert out.loss.item() == pytest.approx(SPPO_ETA2, abs=1e-12)
    assert out.sppo.item() == pytest.approx(SPPO_ETA2, abs=1e-12)
    assert out.reverse_kl.item() == pytest.approx(REVERSE_KL, abs=1e-12)
    assert out.is_forward_kl.item() == pytest.approx(IS_FORWARD_KL, abs=1e-12)
    assert out.chi2.item() == pytest.approx(CHI2, abs=1e-12)
    assert out.forward_kl is None
    assert out.a_chosen.item() == pytest.approx((0.2 + 0.1) / 2, abs=1e-12)
    assert out.a_rejected.item() == pytest.approx((-0.1 - 0.5) / 2, abs=1e-12)
    assert out.d_chosen.item() == pytest.approx((0.5 - 1.0) / 2, abs=1e-12)
    assert out.d_rejected.item() == pytest.approx((-1.0 + 0.0) / 2, abs=1e-12)
    m = out.metrics()
    assert set(m) == {
        "loss",
        "sppo",
        "reverse_kl",
        "is_forward_kl",
        "chi2",
        "a_chosen",
        "a_rejected",
        "d_chosen",
        "d_rejected",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_sppo_term_at_paper_eta_1000():
    policy, last, ref, win, _ = tensors()
    # eta = 1000 (= 1/beta, beta = 0.001): targets 1000 (p - 0.5) = [[300, -200], [100, -50]]
    r = [[0.2 - 300.0, -0.1 + 200.0], [0.1 - 100.0, -0.5 + 50.0]]
    expected = (0.5 * (r[0][0] ** 2 + r[0][1] ** 2) + 0.5 * (r[1][0] ** 2 + r[1][1] ** 2)) / 2
    out = rspo_loss(policy, last, ref, win, eta=1000.0, regularizer="none")
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", list(REGULARIZER_PRESETS))
def test_every_preset_by_hand(name):
    policy, last, ref, win, nll = tensors()
    paper = {
        "none": SPPO_ETA2,
        "reverse_kl": SPPO_ETA2 + 0.5 * REVERSE_KL,
        "is_forward_kl": SPPO_ETA2 + 0.1 * IS_FORWARD_KL,
        "chi2": SPPO_ETA2 + 0.1 * CHI2,
        "forward_kl": SPPO_ETA2 + 0.1 * FORWARD_KL,
        "mixed": SPPO_ETA2 + 0.1 * IS_FORWARD_KL + 0.5 * REVERSE_KL,
    }
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer=name, ref_sample_nll=nll)
    assert out.loss.item() == pytest.approx(paper[name], abs=1e-12)
    assert out.forward_kl.item() == pytest.approx(FORWARD_KL, abs=1e-12)


def test_custom_mixture_by_mapping_and_by_config_name():
    policy, last, ref, win, nll = tensors()
    mix = {"chi2": 0.3, "reverse_kl": 0.2, "forward_kl": 0.05, "is_forward_kl": 0.0}
    expected = SPPO_ETA2 + 0.3 * CHI2 + 0.2 * REVERSE_KL + 0.05 * FORWARD_KL
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer=mix, ref_sample_nll=nll)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    resolved = resolve_regularizer("my_mix", custom={"my_mix": mix})
    assert resolved == mix
    out2 = rspo_loss(policy, last, ref, win, eta=2.0, regularizer=resolved, ref_sample_nll=nll)
    assert out2.loss.item() == pytest.approx(expected, abs=1e-12)


def test_log_weight_clip_at_10_and_zero_gradient_where_clamped():
    # chosen: d = -20 -> exp(min(20, 10)) = e^10 for IS-forward; rejected: d = +20 -> e^10 for chi2
    policy = torch.tensor([[-30.0, -5.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([[-10.0, -25.0]], dtype=torch.float64)
    half = torch.full((1, 2), 0.5, dtype=torch.float64)

    out = rspo_loss(policy, policy.detach(), ref, half, eta=1.0, regularizer={"is_forward_kl": 1.0})
    assert out.is_forward_kl.item() == pytest.approx(math.exp(10.0) + math.exp(-20.0), rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, policy)
    # d/dpolicy exp(-d) = -exp(-d) on the unclamped entry; 0 where the clamp is active (SPPO grad is 0: a = 0)
    assert grad[0, 0].item() == 0.0
    assert grad[0, 1].item() == pytest.approx(-math.exp(-20.0), rel=1e-12)

    out = rspo_loss(policy, policy.detach(), ref, half, eta=1.0, regularizer={"chi2": 1.0})
    assert out.chi2.item() == pytest.approx(math.exp(-20.0) + math.exp(10.0), rel=1e-12)
    (grad,) = torch.autograd.grad(out.loss, policy)
    assert grad[0, 1].item() == 0.0
    assert grad[0, 0].item() == pytest.approx(math.exp(-20.0), rel=1e-12)

    # a different clip (the Llama script's R = 7)
    out = rspo_loss(policy, policy.detach(), ref, half, eta=1.0, regularizer="none", is_clip=7.0)
    assert out.is_forward_kl.item() == pytest.approx(math.exp(7.0) + math.exp(-20.0), rel=1e-12)


def test_gradients_match_hand_derivatives():
    policy, last, ref, win, nll = tensors(requires_grad=True)
    lam = {"reverse_kl": 0.7, "chi2": 0.2, "forward_kl": 0.4}
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer=lam, ref_sample_nll=nll)
    g_policy, g_nll = torch.autograd.grad(out.loss, (policy, nll))
    B = 2
    a_minus_target = [[-0.4, 0.3], [-0.1, -0.4]]
    d = [[0.5, -1.0], [-1.0, 0.0]]
    # dL/dpolicy[b][c] = (a - target)/B + 0.7 * 2 d / B + 0.2 * exp(d) / B
    hand = [
        [a_minus_target[b][c] / B + 0.7 * 2 * d[b][c] / B + 0.2 * math.exp(d[b][c]) / B for c in range(2)]
        for b in range(B)
    ]
    assert g_policy.tolist() == [pytest.approx(row, abs=1e-12) for row in hand]
    assert g_nll.tolist() == pytest.approx([0.4 / B, 0.4 / B], abs=1e-12)  # 0.4 * mean -> 0.4 / B each

    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer={"is_forward_kl": 1.5})
    (g_policy,) = torch.autograd.grad(out.loss, policy)
    hand = [[a_minus_target[b][c] / B - 1.5 * math.exp(-d[b][c]) / B for c in range(2)] for b in range(B)]
    assert g_policy.tolist() == [pytest.approx(row, abs=1e-12) for row in hand]


def test_inactive_terms_carry_no_gradient():
    policy, last, ref, win, _ = tensors(requires_grad=True)
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer="none")
    (g,) = torch.autograd.grad(out.loss, policy)
    assert g.tolist() == [pytest.approx([-0.2, 0.15]), pytest.approx([-0.05, -0.2])]  # (a - target) / 2
    assert not out.sppo.requires_grad and not out.chi2.requires_grad


def test_forward_kl_needs_ref_sample_nll():
    policy, last, ref, win, _ = tensors()
    with pytest.raises(ValueError, match="ref_sample_nll"):
        rspo_loss(policy, last, ref, win, eta=2.0, regularizer="forward_kl")
    with pytest.raises(ValueError, match="ref_sample_nll"):
        rspo_loss(policy, last, ref, win, eta=2.0, regularizer={"forward_kl": 0.3, "chi2": 0.1})
    # lambda = 0 does not need it
    out = rspo_loss(policy, last, ref, win, eta=2.0, regularizer={"forward_kl": 0.0})
    assert out.loss.item() == pytest.approx(SPPO_ETA2, abs=1e-12)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        rspo_loss(policy, last, ref, win, eta=2.0, regularizer="forward_kl", ref_sample_nll=torch.zeros(3))


def test_unknown_names_terms_and_negative_coefficients_list_allowed_values():
    with pytest.raises(ValueError, match="unknown regularizer 'kl'") as exc:
        resolve_regularizer("kl")
    for name in ("none", "reverse_kl", "is_forward_kl", "chi2", "forward_kl", "mixed"):
        assert repr(name) in str(exc.value)
    with pytest.raises(ValueError, match="'my_mix'"):  # custom names are listed too
        resolve_regularizer("nope", custom={"my_mix": {"chi2": 1.0}})
    with pytest.raises(ValueError, match="unknown regularizer term 'js'") as exc:
        resolve_regularizer({"js": 0.1})
    for term in REGULARIZER_TERMS:
        assert repr(term) in str(exc.value)
    with pytest.raises(ValueError, match=">= 0"):
        resolve_regularizer({"reverse_kl": -0.5})
    with pytest.raises(ValueError, match=">= 0"):
        resolve_regularizer("bad", custom={"bad": {"chi2": -1}})
    for bad in (float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match=">= 0"):
            resolve_regularizer({"chi2": bad})
    policy, last, ref, win, _ = tensors()
    with pytest.raises(ValueError, match=">= 0"):
        rspo_loss(policy, last, ref, win, eta=2.0, regularizer={"chi2": -0.1})
    with pytest.raises(ValueError, match="allowed names"):
        rspo_loss(policy, last, ref, win, eta=2.0, regularizer="reverse-kl")


def test_custom_mixture_named_like_a_preset_replaces_its_coefficients():
    assert resolve_regularizer("mixed", custom={"mixed": {"reverse_kl": 0.5, "is_forward_kl": 0.1}}) == {
        "is_forward_kl": 0.1,
        "reverse_kl": 0.5,
    }
    assert resolve_regularizer("chi2", custom={"chi2": {"chi2": 0.5}}) == {"chi2": 0.5}
    assert resolve_regularizer("chi2") == {"chi2": 0.1}  # the preset itself is untouched
    with pytest.raises(ValueError, match="coefficient of 'chi2' must be a finite number >= 0"):
        resolve_regularizer("chi2", custom={"chi2": {"chi2": -1.0}})


def test_resolve_returns_a_copy():
    got = resolve_regularizer("mixed")
    got["chi2"] = 9.0
    assert resolve_regularizer("mixed") == {"is_forward_kl": 0.1, "reverse_kl": 0.5}


@pytest.mark.parametrize(
    ("shape_policy", "shape_other"),
    [((2,), (2,)), ((2, 3), (2, 3)), ((2, 2), (3, 2)), ((2, 2), (2,))],
)
def test_shape_convention_b_by_2(shape_policy, shape_other):
    with pytest.raises(ValueError, match="column 0 = chosen"):
        rspo_loss(
            torch.zeros(shape_policy),
            torch.zeros(shape_other),
            torch.zeros(shape_other),
            torch.full(shape_other, 0.5),
            eta=1.0,
            regularizer="none",
        )


@pytest.mark.parametrize("eta", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_eta(eta):
    policy, last, ref, win, _ = tensors()
    with pytest.raises(ValueError, match="eta"):
        rspo_loss(policy, last, ref, win, eta=eta, regularizer="none")
