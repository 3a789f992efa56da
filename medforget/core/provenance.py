"""What produced a file: medforget's version, the git commit of the checkout, torch and Lightning versions."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import lightning as L
import torch

import medforget


def code_version() -> dict[str, Any]:
    """medforget's version and, when run from a git checkout, the commit (and whether the tree was modified)."""
    info: dict[str, Any] = {"medforget": medforget.__version__, "git_commit": None, "git_dirty": None,
                            "torch": torch.__version__, "lightning": L.__version__}
    root = Path(medforget.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info
