"""Progress output: bars only on a terminal, one line per stage otherwise.

In a log file (a batch job, CI, ``nohup``, ``| tee``) a progress bar is hundreds of carriage-return updates, so bars
(MONAI's "Loading dataset", Lightning's progress bar, the synthetic hospital's) are shown only when standard error is
a terminal; otherwise each stage prints at most one line (:class:`StageLine` for a fit).
``MEDFORGET_PROGRESS=1`` or ``0`` forces the choice.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import lightning as L


def interactive() -> bool:
    """``True`` when progress bars should be drawn: ``MEDFORGET_PROGRESS`` if set, else whether stderr is a TTY."""
    forced = os.environ.get("MEDFORGET_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class StageLine(L.Callback):
    """One line on stderr when a fit ends, instead of a progress bar: epochs, steps, seconds and the last epoch's
    losses and fused-head metrics (no patient-level information)."""

    def __init__(self, label: str = "fit") -> None:
        self.label = label
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if "loss" in k or "fused" in k or "score" in k}
        metrics = ", ".join(f"{k} {_number(v):.4g}" for k, v in sorted(shown.items())[:8])
        print(f"{self.label}: {trainer.current_epoch} epoch(s), {trainer.global_step} steps in "
              f"{time.perf_counter() - self._start:.1f} s" + (f"; {metrics}" if metrics else ""),
              file=sys.stderr, flush=True)


def _number(value: Any) -> float:
    return float(value.item() if hasattr(value, "item") else value)
