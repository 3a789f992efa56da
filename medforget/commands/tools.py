"""The data and custody verbs: ``synth`` (a synthetic hospital) and ``verify`` (the chain of custody)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from medforget.commands.base import VERBS

log = logging.getLogger("medforget")


def synth(args: list[str] | None = None) -> Path:
    """``medforget synth``: write a synthetic hospital."""
    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    parser = ArgumentParser(prog="medforget synth", description=VERBS["synth"], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--out", type=str, default="data/hospital", help="Output directory.")
    parser.add_argument("--overwrite", type=bool, default=False, help="Replace an existing hospital in --out.")
    parser.add_class_arguments(SyntheticConfig, None)
    cfg = parser.parse_args(args)
    init = parser.instantiate_classes(cfg)
    config = SyntheticConfig(**{k: init[k] for k in SyntheticConfig.__dataclass_fields__})
    manifest = generate_hospital(cfg.out, config, overwrite=cfg.overwrite)
    print(f"wrote {manifest}")
    return manifest


def verify(args: list[str] | None = None) -> list[Any]:
    """``medforget verify AUDIT_DIR [CKPT ...]``: see :mod:`medforget.core.verify`."""
    from medforget.core.verify import verify_or_raise

    parser = ArgumentParser(prog="medforget verify", description=VERBS["verify"], default_env=False)
    parser.add_argument("audit_dir", type=str, help="Directory of audit.json and/or lm_audit.json (with sidecars).")
    parser.add_argument("checkpoints", type=str, nargs="*", default=[],
                        help="Checkpoint files to check against the audit (default: the paths the audit recorded).")
    cfg = parser.parse_args(args)
    checks = verify_or_raise(cfg.audit_dir, cfg.checkpoints)
    for check in checks:
        print(f"OK  {check.path}: {check.message}")
    print(f"verified {len(checks)} checks: nothing changed since the audit")
    return checks
