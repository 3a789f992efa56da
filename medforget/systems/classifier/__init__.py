"""The classifier system: :class:`FusionClassifier` (what ``train`` fits: the original model and the retrained
reference), the sharded :class:`FusionEnsemble` (``train --shards``, SISA), and their checkpoints."""

from medforget.systems.classifier.checkpoints import export_classifier, load_classifier
from medforget.systems.classifier.ensemble import FusionEnsemble
from medforget.systems.classifier.fusion import CHECKPOINT_FORMAT, FusionClassifier

__all__ = ["CHECKPOINT_FORMAT", "FusionClassifier", "FusionEnsemble", "export_classifier", "load_classifier"]
