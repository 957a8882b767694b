"""The RSPO loss: the SPPO square loss plus lambda-weighted regularizers (arXiv 2503.00030).

Conventions (the authors' ``SPPORegTrainer.sppo_loss``):

* every log-prob tensor has shape (B, 2): column 0 = chosen y_w, column 1 = rejected y_l;
* log-probs are SUMS over the response tokens (not means);
* ``last`` = pi_t, the iterate that generated the data (the SPPO "reference");
  ``ref`` = mu, the original base model (the regularizer's magnet);
* ``eta`` is the SPPO step size, 1/beta in the authors' code (eta = 1000 <-> beta = 0.001).

With a = log pi_theta - log pi_t and d = log pi_theta - log mu:

    L_SPPO        = mean_b 1/2 [ (a_w - eta (p_w - 1/2))^2 + (a_l - eta (p_l - 1/2))^2 ]
    reverse_kl    = mean_b d_w^2 + mean_b d_l^2
    is_forward_kl = mean_b exp(min(-d_w, C)) + mean_b exp(min(-d_l, C))     (C = is_clip = 10)
    chi2          = mean_b exp(min(d_w, C)) + mean_b exp(min(d_l, C))
    forward_kl    = mean_b NLL_theta(y ~ mu)      (token-mean NLL of mu's samples under pi_theta)
    L             = L_SPPO + sum_k lambda_k R_k
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

REGULARIZER_TERMS: tuple[str, ...] = ("reverse_kl", "is_forward_kl", "chi2", "forward_kl")

#: The paper's settings (Mistral runs of arXiv 2503.00030; ``mixed`` = ``sppo_forward1reverse5`` at 0.1).
REGULARIZER_PRESETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "none": MappingProxyType({}),
        "reverse_kl": MappingProxyType({"reverse_kl": 0.5}),
        "is_forward_kl": MappingProxyType({"is_forward_kl": 0.1}),
        "chi2": MappingProxyType({"chi2": 0.1}),
        "forward_kl": MappingProxyType({"forward_kl": 0.1}),
        "mixed": MappingProxyType({"is_forward_kl": 0.1, "reverse_kl": 0.5}),
    }
)

#: The regularizers of the paper's comparison (the workflow's ``reg: all``).
PAPER_SWEEP: tuple[str, ...] = ("none", "reverse_kl", "forward_kl", "is_forward_kl", "chi2", "mixed")


def _check_mixture(mixture: Any, where: str) -> dict[str, float]:
    if not isinstance(mixture, Mapping):
        raise ValueError(f"{where}: expected a mapping {{term: lambda}}, got {type(mixture).__name__}")
    out: dict[str, float] = {}
    for term, lam in mixture.items():
        if term not in REGULARIZER_TERMS:
            raise ValueError(
                f"{where}: unknown regularizer term {term!r}; allowed terms: {list(REGULARIZER_TERMS)}"
            )
        if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"{where}: coefficient of {term!r} must be a finite number >= 0, got {lam!r}")
        out[term] = float(lam)
    return out


def resolve_regularizer(
    regularizer: str | Mapping[str, float], custom: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float]:
    """A preset name, a name from ``custom`` (the config's named mixtures) or a mapping -> {term: lambda}.

    Unknown names or terms and negative (or non-finite) coefficients raise ``ValueError`` listing the
    allowed values. A custom mixture named like a preset replaces the preset's coefficients (the
    config's ``regularizers:`` lists the six presets with the paper's values; editing one is explicit).
    """
    named = {name: dict(mix) for name, mix in REGULARIZER_PRESETS.items()}
    for name, mix in (custom or {}).items():
        named[name] = _check_mixture(mix, f"regularizer {name!r}")
    if isinstance(regularizer, str):
        if regularizer not in named:
            raise ValueError(f"unknown regularizer {regularizer!r}; allowed names: {sorted(named)}")
        return dict(named[regularizer])
    return _check_mixture(regularizer, "regularizer")


class LossOutput(NamedTuple):
    """``loss`` carries the gradient; the other fields are detached 0-dim tensors for logging."""

    loss: torch.Tensor
    sppo: torch.Tensor
    reverse_kl: torch.Tensor
    is_forward_kl: torch.Tensor
    chi2: torch.Tensor
    forward_kl: torch.Tensor | None  # None when no ref_sample_nll was given
    a_chosen: torch.Tensor  # mean_b log pi_theta(y_w) - log pi_t(y_w)
    a_rejected: torch.Tensor
    d_chosen: torch.Tensor  # mean_b log pi_theta(y_w) - log mu(y_w)
    d_rejected: torch.Tensor

    def metrics(self) -> dict[str, float]:
        """Every field as a Python float (forward_kl omitted when absent), for the training log."""
        return {k: float(v.detach()) for k, v in self._asdict().items() if v is not None}


def _check_pairs(name: str, t: torch.Tensor, batch: int | None) -> None:
    if t.ndim != 2 or t.shape[1] != 2 or (batch is not None and t.shape[0] != batch):
        want = f"({batch}, 2)" if batch is not None else "(B, 2)"
        raise ValueError(
            f"{name} must have shape {want} (column 0 = chosen, 1 = rejected), got {tuple(t.shape)}"
        )


def rspo_loss(
    policy_logps: torch.Tensor,
    last_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    win_probs: torch.Tensor,
    *,
    eta: float,
    regularizer: str | Mapping[str, float],
    ref_sample_nll: torch.Tensor | None = None,
    is_clip: float = 10.0,
) -> LossOutput:
    """SPPO square loss + sum_k lambda_k R_k on a batch of (chosen, rejected) pairs; see the module doc.

    ``policy_logps``, ``last_logps``, ``ref_logps`` are (B, 2) SUMMED log-probs under pi_theta, pi_t
    and mu; ``win_probs`` is (B, 2) = (p_chosen, p_rejected); ``ref_sample_nll`` is (B,), required when
    ``forward_kl`` has lambda > 0. ``regularizer`` is a preset name or a mapping {term: lambda}.
    """
    import torch

    lambdas = resolve_regularizer(regularizer)
    if not (math.isfinite(eta) and eta > 0):
        raise ValueError(f"eta must be a finite number > 0, got {eta}")
    _check_pairs("policy_logps", policy_logps, None)
    batch = policy_logps.shape[0]
    for name, t in (("last_logps", last_logps), ("ref_logps", ref_logps), ("win_probs", win_probs)):
        _check_pairs(name, t, batch)

    # SPPO: regress log(pi_theta / pi_t) of each sample on eta * (P_hat(y > pi_t) - 1/2)
    a = policy_logps - last_logps
    target = eta * (win_probs - 0.5)
    sppo = (0.5 * ((a - target) ** 2).sum(dim=1)).mean()

    # regularizers on the same two samples y_w, y_l ~ pi_t: each = mean_b(chosen) + mean_b(rejected)
    d = policy_logps - ref_logps
    terms = {
        "reverse_kl": (d**2).mean(dim=0).sum(),
        "is_forward_kl": torch.exp(torch.clamp(-d, max=is_clip)).mean(dim=0).sum(),
        "chi2": torch.exp(torch.clamp(d, max=is_clip)).mean(dim=0).sum(),
    }
    if ref_sample_nll is not None:
        if ref_sample_nll.shape != (batch,):
            raise ValueError(f"ref_sample_nll must have shape ({batch},), got {tuple(ref_sample_nll.shape)}")
        terms["forward_kl"] = ref_sample_nll.mean()
    elif lambdas.get("forward_kl", 0.0) > 0:
        raise ValueError(
            "the forward_kl regularizer needs ref_sample_nll (NLL under pi_theta of mu's samples)"
        )

    loss = sppo
    for term, lam in lambdas.items():
        if lam > 0:
            loss = loss + lam * terms[term]

    return LossOutput(
        loss=loss,
        sppo=sppo.detach(),
        reverse_kl=terms["reverse_kl"].detach(),
        is_forward_kl=terms["is_forward_kl"].detach(),
        chi2=terms["chi2"].detach(),
        forward_kl=terms["forward_kl"].detach() if "forward_kl" in terms else None,
        a_chosen=a[:, 0].mean().detach(),
        a_rejected=a[:, 1].mean().detach(),
        d_chosen=d[:, 0].mean().detach(),
        d_rejected=d[:, 1].mean().detach(),
    )
