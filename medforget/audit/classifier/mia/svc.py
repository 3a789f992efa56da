"""Population attack with an RBF support-vector classifier on per-sample output features (SalUn's SVC MIA)."""

from __future__ import annotations

from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from medforget.audit.classifier.mia.population import PopulationAttack, scaled


class SVCAttack(PopulationAttack):
    """Class-balanced RBF SVC; ``C`` chosen by cross-validated ROC-AUC."""

    param_grid = {"svc__C": [0.1, 1.0, 10.0]}

    def estimator(self) -> Pipeline:
        return scaled(SVC(kernel="rbf", gamma="scale", class_weight="balanced"))
