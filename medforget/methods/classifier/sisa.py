"""SISA: exact unlearning by retraining the affected shards of a sharded ensemble (Bourtoule et al., S&P 2021).

Unlike the other methods, SISA takes no gradient steps on the loaded model: ``unlearn --method SISA`` hands the run to
:meth:`SISA.retrain` (see :mod:`medforget.methods.classifier.sharding`), which retrains, from their last unaffected
slice checkpoint, only the shards of a ``train --shards K`` ensemble that hold forget patients, and exports the new
ensemble. The Lightning trainer the ``unlearn`` verb builds is not used; the recipe (epochs per slice, batch size,
seed, precision) is the one recorded in the ensemble, so the result equals training the same shards without the
patients."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from medforget.methods.classifier.base import UnlearningMethod


class SISA(UnlearningMethod):
    """Exact unlearning of a sharded ensemble (``train --shards K [--slices S]``).

    It takes no optimizer settings (the recipe is the ensemble's): it narrows the base's arguments to ``ckpt``, so
    ``--print_config`` offers no learning rate that would be ignored.

    Args:
        ckpt: The ensemble checkpoint (``<out>/model.ckpt`` of ``train --shards``); its slice checkpoints must be
            where it records them. It is only read.
    """

    retrains: ClassVar[bool] = True  # the unlearn verb calls retrain() instead of fitting this module
    accepts_ensemble: ClassVar[bool] = True

    def __init__(self, ckpt: str | None = None) -> None:
        self._ckpt_path = ckpt
        super().__init__(ckpt=ckpt)

    def attach(self, classifier: Any) -> SISA:
        from medforget.methods.classifier.sharding import sisa_record

        sisa_record(classifier, self._ckpt_path)  # a clear error for a single (non-sharded) model
        self.classifier = classifier
        return self

    def unlearning_loss(self, forget: dict, retain: dict) -> dict:
        raise RuntimeError("SISA retrains shards (SISA.retrain); it has no unlearning loss")

    def retrain(self, cli: Any) -> Path:
        """Run the exact unlearning of ``cli``'s request (:func:`~medforget.methods.classifier.sharding.unlearn_sharded`
        retrains the affected shards)."""
        from medforget.methods.classifier.sharding import unlearn_sharded

        return unlearn_sharded(cli, self)
