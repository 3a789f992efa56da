"""``python -m medforget <verb>``: parsing and dispatch only.

The verbs are functions of their argv in :mod:`medforget.commands` (``demo``: :func:`medforget.demo.command`); this
module picks one by name, turns the errors we raise for bad input into one line, and prints the usage.
"""

from __future__ import annotations

import difflib
import logging
import sys

import medforget
from medforget import demo
from medforget.commands import COMMANDS as VERB_COMMANDS
from medforget.commands import VERBS

COMMANDS = {**VERB_COMMANDS, "demo": demo.command}
COMMANDS = {name: COMMANDS[name] for name in VERBS}  # in the order of the usage text


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m medforget`` and the ``medforget`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m medforget {" + ",".join(COMMANDS) + "} [options]   (<verb> --help for options)\n\n"
    usage += "\n".join(f"  {name:<11} {text}" for name, text in VERBS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    if argv[0] in ("-V", "--version"):
        print(f"medforget {medforget.__version__}")
        return
    verb = argv[0]
    if verb not in COMMANDS:
        close = difflib.get_close_matches(verb, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        sys.exit(f"medforget: unknown command {verb!r}{hint}\n\n{usage}")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    try:
        COMMANDS[verb](argv[1:])
    except (OSError, ValueError, KeyError) as err:
        # errors we raise for bad input: one clear line, no traceback from deep inside
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.exit(f"medforget {verb}: error: {message}")
