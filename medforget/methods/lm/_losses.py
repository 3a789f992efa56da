"""Preference-style forget losses shared by the language-model methods: pure functions of sequence log-probabilities
(tested against hand computations), plus the model-level forget objectives that several methods reuse (NPO is also
the fine-tuning loss of GRIN and SURE).

Log-probabilities are summed over the labelled (answer) tokens of each sequence, ``[B]``; losses are batch means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medforget.methods.lm.base import LMUnlearningMethod, mean_nll, sequence_logprob
from medforget.systems.lm import ClinicalLM


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation (Zhang et al., 2024): ``-(2/beta) log sigmoid(-beta (log pi - log pi_ref))``.

    Args:
        logp: ``log pi_theta(y|x)`` of each forget answer ``[B]``.
        ref_logp: ``log pi_ref(y|x)`` of the same answers under the original model ``[B]``.
        beta: Inverse temperature; as ``beta -> 0`` the gradient becomes gradient ascent's.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def simnpo_loss(logp: torch.Tensor, length: torch.Tensor, beta: float, delta: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al., 2024): ``-(2/beta) log sigmoid(-(beta/|y|) log pi(y|x) - delta)``, no reference model.

    ``-log pi / |y|`` is the answer's mean per-token NLL; ``delta`` is the paper's reward margin (not scaled by
    ``beta``; the design's ``beta (NLL/|y| - delta)`` is the same loss with ``delta`` divided by ``beta``).

    Args:
        logp: ``log pi_theta(y|x)`` summed over the answer tokens ``[B]``.
        length: Answer lengths ``|y|`` in tokens ``[B]``.
        beta: Inverse temperature.
        delta: Reward margin.
    """
    return -(2.0 / beta) * F.logsigmoid(-(beta / length.clamp_min(1)) * logp - delta).mean()


def dpo_loss(win_logp: torch.Tensor, win_ref: torch.Tensor, lose_logp: torch.Tensor, lose_ref: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Direct preference optimisation (Rafailov et al., 2023):
    ``-log sigmoid(beta [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])``.

    Args:
        win_logp: ``log pi_theta`` of the preferred answers ``[B]`` (IdkDPO: the refusals).
        win_ref: ``log pi_ref`` of the preferred answers ``[B]``.
        lose_logp: ``log pi_theta`` of the dispreferred answers ``[B]`` (IdkDPO: the true answers).
        lose_ref: ``log pi_ref`` of the dispreferred answers ``[B]``.
        beta: Inverse temperature.
    """
    return -F.logsigmoid(beta * ((win_logp - win_ref) - (lose_logp - lose_ref))).mean()


# --- model-level forget objectives --------------------------------------------------------------------------------
def reference_logprob(reference: ClinicalLM | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log pi_ref`` of each sequence's labelled tokens ``[B]`` under the frozen original model (no gradient)."""
    if reference is None:
        raise RuntimeError("this loss needs the frozen original model (needs_reference=True)")
    with torch.no_grad():
        return sequence_logprob(reference, batch)[0]


def npo_objective(model: ClinicalLM, reference: ClinicalLM | None, forget: dict[str, torch.Tensor],
                  beta: float) -> torch.Tensor:
    """:func:`npo_loss` of a forget batch: the model against the frozen original."""
    return npo_loss(sequence_logprob(model, forget)[0], reference_logprob(reference, forget), beta)


def forget_objective(kind: str, model: ClinicalLM, reference: ClinicalLM | None, forget: dict[str, torch.Tensor],
                     beta: float) -> torch.Tensor:
    """The forget term ``L_f`` of GradDiff (``graddiff``: ``-NLL_f``) or NPO (``npo``), for methods that fine-tune with
    either (GRIN, SURE)."""
    if kind == "npo":
        return npo_objective(model, reference, forget, beta)
    if kind == "graddiff":
        return -mean_nll(model, forget)
    raise ValueError(f"unknown forget objective {kind!r}: 'graddiff' or 'npo'")


FORGET_OBJECTIVES = ("graddiff", "npo")


class SelectThenFineTune(LMUnlearningMethod, register=False):
    """Shared part of the methods that select weights first and then fine-tune with :func:`forget_objective`
    (GRIN, SURE): their ``then`` (``graddiff`` or ``npo``), ``beta`` and ``fraction`` arguments, the frozen original
    needed by NPO, and the loss. Not registered (private name)."""

    @staticmethod
    def check_selection_args(then: str, fraction: float) -> None:
        if then not in FORGET_OBJECTIVES:
            raise ValueError(f"model.then must be 'graddiff' or 'npo', got {then!r}")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"model.fraction must be in (0, 1], got {fraction}")

    @property
    def needs_reference(self) -> bool:  # the frozen original for NPO
        return self.hparams.then == "npo"

    def unlearning_loss(self, forget: dict, retain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = forget_objective(self.hparams.then, self.lm, self.reference, forget, self.hparams.beta)
        return self.combine(loss, retain)
