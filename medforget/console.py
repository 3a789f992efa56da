"""Whether progress bars may be drawn: only on a terminal.

In a log file (a batch job, CI, ``nohup``, ``| tee``) a progress bar is hundreds of carriage-return updates, so bars
(MONAI's "Loading dataset", Lightning's progress bar, the synthetic hospital's) are shown only when standard error is
a terminal; otherwise each stage prints at most one line. ``MEDFORGET_PROGRESS=1`` or ``0`` forces the choice.
"""

from __future__ import annotations

import os
import sys


def interactive() -> bool:
    """``True`` when progress bars should be drawn: ``MEDFORGET_PROGRESS`` if set, else whether stderr is a TTY."""
    forced = os.environ.get("MEDFORGET_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
