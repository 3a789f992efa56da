"""The verbs of ``python -m medforget``, each a function of its argv (``list[str]``) that parses it and runs.

``train``, ``unlearn``, ``train-lm`` and ``unlearn-lm`` are LightningCLIs: every typed ``__init__`` argument of the
model, the datamodule and the Trainer is a flag and a YAML key (``--config configs/...yaml``, ``--print_config``),
and the resolved config is saved next to each run. ``synth``, ``evaluate``, ``evaluate-lm`` and ``verify`` use
jsonargparse, the parser LightningCLI is built on. ``demo`` lives in :mod:`medforget.demo` (it runs on
:mod:`medforget.api`, which calls these functions).

To add a verb: write ``def my_verb(args: list[str] | None = None)`` in the module of its task (or a new one here),
add its one-line help to :data:`medforget.commands.base.VERBS` and the function to :data:`COMMANDS`; add a typed
wrapper to :mod:`medforget.api` if Python callers need it.
"""

from medforget.commands.base import VERBS
from medforget.commands.classifier import evaluate, train, unlearn
from medforget.commands.lm import evaluate_lm, train_lm, unlearn_lm
from medforget.commands.tools import synth, verify
from medforget.commands.tune import tune

#: verb -> function of its argv (``demo`` is added by :mod:`medforget.cli`, above the API it runs on)
COMMANDS = {"synth": synth, "train": train, "unlearn": unlearn, "tune": tune, "evaluate": evaluate,
            "train-lm": train_lm, "unlearn-lm": unlearn_lm, "evaluate-lm": evaluate_lm, "verify": verify}

__all__ = ["COMMANDS", "VERBS", "evaluate", "evaluate_lm", "synth", "train", "train_lm", "tune", "unlearn",
           "unlearn_lm", "verify"]
