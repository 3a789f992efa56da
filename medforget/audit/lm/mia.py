"""Membership-inference attacks on language models and MUSE's privacy leakage, as pure functions of per-token
log-probabilities (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models").

Convention everywhere: a higher score means "more member-like". Each attack scores one text from its tokens'
log-probabilities under the audited model (:class:`TokenScores`):

- ``loss`` (Yeom et al., 2018): the mean token log-likelihood, ``-NLL / n``;
- ``zlib`` (Carlini et al., 2021): the mean log-likelihood divided by the zlib-compressed length of the text in bytes
  (as the reference code of Min-K%++ and MUSE; a text that is hard to compress yet likely is member-like);
- ``min_k`` (Min-K% Prob, Shi et al., 2024): the mean of the lowest ``k`` share of the token log-probabilities;
- ``min_k_plus_plus`` (Min-K%++, Zhang et al., 2024): each token's log-probability standardised by the mean
  ``mu_t = E_{z~p(.|x<t)} log p(z|x<t)`` and standard deviation ``sigma_t`` of the log-probability under the model's
  own next-token distribution, then the mean of the lowest ``k`` share;
- ``reference`` (Carlini et al., 2021): ``NLL_ref / n - NLL / n``, the likelihood gain over a reference model.

``k`` takes ``max(1, int(n * k))`` tokens (MUSE's headline is Min-K% with ``k = 0.4``). :func:`privleak` is MUSE's
relative AUC gap to the retain-only model, in MUSE's convention (negative: under-unlearned, positive: over-unlearned).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medforget.audit.roc import roc, tpr_at_fpr
from medforget.core.registry import Registry


@dataclass
class TokenScores:
    """Per-token quantities of one text under a model.

    Attributes:
        logp: ``(n,)`` log-probability of each labelled token given its prefix.
        mu: ``(n,)`` expected log-probability under the next-token distribution (Min-K%++); ``None`` if not computed.
        sigma: ``(n,)`` standard deviation of the log-probability under that distribution.
    """

    logp: np.ndarray
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None

    @property
    def mean_logp(self) -> float:
        return float(np.mean(self.logp)) if len(self.logp) else math.nan


def _lowest_mean(values: np.ndarray, k: float) -> float:
    if len(values) == 0:
        return math.nan
    n = max(1, int(len(values) * k))
    return float(np.sort(values)[:n].mean())


def loss_score(tokens: TokenScores) -> float:
    """LOSS: the mean token log-likelihood (``-`` the mean NLL)."""
    return tokens.mean_logp


def zlib_score(tokens: TokenScores, text: str) -> float:
    """zlib: the mean log-likelihood over the zlib-compressed length of ``text`` (bytes)."""
    return tokens.mean_logp / len(zlib.compress(text.encode("utf-8")))


def min_k_score(tokens: TokenScores, k: float = 0.2) -> float:
    """Min-K% Prob: the mean of the lowest ``k`` share of the token log-probabilities."""
    return _lowest_mean(np.asarray(tokens.logp, np.float64), k)


def min_k_plus_plus_score(tokens: TokenScores, k: float = 0.2) -> float:
    """Min-K%++: the mean of the lowest ``k`` share of ``(log p(x_t) - mu_t) / sigma_t``."""
    if tokens.mu is None or tokens.sigma is None:
        raise ValueError("Min-K%++ needs the next-token distribution's mu and sigma (score_texts(..., stats=True))")
    z = (np.asarray(tokens.logp, np.float64) - tokens.mu) / np.maximum(tokens.sigma, 1e-12)
    return _lowest_mean(z, k)


def reference_score(tokens: TokenScores, reference: TokenScores) -> float:
    """Reference: the reference model's mean NLL minus the audited model's (the same tokens)."""
    return tokens.mean_logp - reference.mean_logp


#: Attack name -> score of one text from (target tokens, reference tokens or None, text, k); the registry helper of
#: the methods and the classifier's attacks, so an unknown name gets the same did-you-mean error.
ATTACKS: Registry[Callable[[TokenScores, TokenScores | None, str, float], float]] = Registry("attack")
ATTACKS.register("loss", lambda t, ref, text, k: loss_score(t))
ATTACKS.register("zlib", lambda t, ref, text, k: zlib_score(t, text))
ATTACKS.register("min_k", lambda t, ref, text, k: min_k_score(t, k))
ATTACKS.register("min_k_plus_plus", lambda t, ref, text, k: min_k_plus_plus_score(t, k))
ATTACKS.register("reference", lambda t, ref, text, k: reference_score(t, ref))


def attack_scores(attack: str, tokens: list[TokenScores], texts: list[str], k: float = 0.2,
                  reference: list[TokenScores] | None = None) -> np.ndarray:
    """One attack's scores of several texts (``reference``: the reference model's tokens of the same texts)."""
    score = ATTACKS.get(attack)  # an unknown name: UnknownNameError (a ValueError) with the closest names
    if attack == "reference" and reference is None:
        raise ValueError("the reference attack needs the reference model's token scores")
    refs = reference if reference is not None else [None] * len(tokens)
    return np.array([score(t, r, x, k) for t, r, x in zip(tokens, refs, texts, strict=True)])


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC-AUC of members (positives) vs non-members, higher score = member (``sklearn.metrics.roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    member_scores, nonmember_scores = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        return math.nan
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(y, np.r_[member_scores, nonmember_scores]))


def mia_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC and TPR at 1% / 10% FPR of members vs non-members."""
    fpr, tpr = roc(np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64))
    return {"auc": mia_auc(member_scores, nonmember_scores), "tpr@1%fpr": tpr_at_fpr(fpr, tpr, 0.01),
            "tpr@10%fpr": tpr_at_fpr(fpr, tpr, 0.1)}


def privleak(auc: float, retain_auc: float) -> float:
    """MUSE's privacy leakage (Shi et al., 2024, and its code ``eval.py``), in percent.

    MUSE labels the forget texts 0 and the holdout texts 1, so its AUC is ``1 - A`` in this module's orientation
    (``A`` = attack AUC with the forget texts as members, :func:`mia_auc`), and its
    ``PrivLeak = (AUC_unl - AUC_ret) / AUC_ret`` becomes ``(A_ret - A_unl) / (1 - A_ret) * 100``.

    Args:
        auc: ``A_unl``, the audited model's attack AUC (forget = members, holdout = non-members).
        retain_auc: ``A_ret``, the retain-only model's.

    Returns:
        Near 0: the retain-only model's leakage (the goal). Large negative: the forget texts are still recognisable
        (under-unlearned; MUSE's un-unlearned target models score near -100). Large positive: they stand out as *less*
        likely than never-seen text (over-unlearned, itself a leak). ``nan`` when undefined (``A_ret = 1``).
        Example: ``A_unl = 0.66``, ``A_ret = 0.70`` gives ``+13.3``.
    """
    if math.isnan(auc) or math.isnan(retain_auc) or retain_auc >= 1.0:
        return math.nan
    return (retain_auc - auc) / (1.0 - retain_auc) * 100.0

