"""Population attack with logistic regression on per-sample output features (retain = member, val = non-member)."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from medforget.audit.classifier.mia.population import PopulationAttack, scaled


class LogisticRegressionAttack(PopulationAttack):
    """Class-balanced L2 logistic regression; ``C`` chosen by cross-validated ROC-AUC."""

    param_grid = {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}

    def estimator(self) -> Pipeline:
        return scaled(LogisticRegression(class_weight="balanced", max_iter=2000))
