"""Population attacks: a classifier trained on per-sample features of known members (retain) vs known non-members
(val, held out), then applied to the forget set (the SalUn / Forget-MI style MIA).

Class-balanced (retain is much larger than val), cross-validated (the regularisation strength is chosen by
stratified k-fold ROC-AUC on retain vs val, with folds grouped by patient so that one patient's studies never sit on
both sides of a fold (``StratifiedGroupKFold``); the best cross-validated AUC is reported as ``cv_auc``), and applied
to forget and test samples the classifier never saw. The classifier's own decision gives the member rate.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from medforget.audit.classifier.mia.base import (
    AttackData,
    MembershipAttack,
    entropy,
    log_probs,
    modified_entropy,
    true_class_logit,
)

FEATURES = ("loss", "entropy", "modified_entropy", "max_prob", "true_class_logit", "margin")


def membership_features(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-sample features ``(N, len(FEATURES) + C)``: the :data:`FEATURES` and the sorted softmax probabilities."""
    lp = log_probs(logits)
    p = lp.exp()
    y = labels.long().unsqueeze(-1)
    loss = -lp.gather(-1, y).squeeze(-1)
    z = logits.double()
    other = z.masked_fill(F.one_hot(labels.long(), z.shape[-1]).bool(), -torch.inf).amax(-1)
    margin = z.gather(-1, y).squeeze(-1) - other
    columns = [loss, entropy(logits), modified_entropy(logits, labels), p.amax(-1), true_class_logit(logits, labels),
               margin]
    sorted_probs = p.sort(-1, descending=True).values
    out = torch.cat([torch.stack(columns, -1), sorted_probs], -1).numpy()
    return np.clip(np.nan_to_num(out, posinf=1e6, neginf=-1e6), -1e6, 1e6)


class PopulationAttack(MembershipAttack, register=False):
    """Fit ``estimator()`` (grid over ``param_grid``) on retain (1) vs val (0) features; score = decision function.

    Args:
        folds: Cross-validation folds (fewer if val is smaller).
        seed: Seed of the fold split.
    """

    param_grid: dict[str, list]

    def __init__(self, folds: int = 5, seed: int = 0) -> None:
        self.folds = folds
        self.seed = seed
        self.cv_auc = float("nan")
        self.best_params: dict = {}
        self._fitted = None

    @abstractmethod
    def estimator(self) -> Pipeline:
        """A fresh, class-balanced classifier pipeline."""

    def scores(self, data: AttackData) -> dict[str, torch.Tensor]:
        feats = {part: membership_features(*outputs) for part, outputs in data.target.items()}
        x = np.concatenate([feats["retain"], feats["val"]])
        y = np.r_[np.ones(len(feats["retain"])), np.zeros(len(feats["val"]))]
        retain_groups, val_groups = data.group("retain"), data.group("val")
        groups = np.r_[retain_groups, val_groups + retain_groups.max() + 1]  # (retain and val never share a patient)
        n_retain, n_val = len(np.unique(retain_groups)), len(np.unique(val_groups))
        folds = min(self.folds, n_retain, n_val)
        if folds < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 retain and 2 val patients to cross-validate; got "
                             f"{n_retain} retain and {n_val} val")
        search = GridSearchCV(self.estimator(), self.param_grid, scoring="roc_auc",
                              cv=StratifiedGroupKFold(folds, shuffle=True, random_state=self.seed))
        search.fit(x, y, groups=groups)
        self.cv_auc, self.best_params, self._fitted = float(search.best_score_), search.best_params_, search
        return {part: torch.from_numpy(search.decision_function(f).astype(np.float64)) for part, f in feats.items()}

    def threshold(self, scores: dict[str, torch.Tensor]) -> float:
        return 0.0  # the classifier's own decision: decision_function >= 0 is "member"

    def extra_metrics(self) -> dict[str, float]:
        return {"cv_auc": self.cv_auc, **{f"best_{k.split('__')[-1]}": float(v) for k, v in self.best_params.items()}}


def scaled(classifier) -> Pipeline:
    """Standardise the features, then ``classifier``."""
    return make_pipeline(StandardScaler(), classifier)
