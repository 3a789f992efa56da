"""``medforget verify AUDIT_DIR [CKPT ...]``: the chain of custody, checked.

An audit directory holds ``audit.json`` (classifier) and/or ``lm_audit.json`` (language model), each with a SHA-256
sidecar (``audit.json.sha256``) written after it, and records the SHA-256 of every checkpoint it audited. ``verify``
recomputes them all:

- the audit files against their sidecars (an edited verdict or number is caught);
- without ``CKPT``: every audited checkpoint at the path the audit recorded; with ``CKPT``: each given file (e.g. the
  copy that was deployed) must be one of the audited checkpoints, byte for byte;
- each checkpoint against its own sidecar (``model.ckpt.sha256``) when it has one;
- the chain: an unlearned model's recorded parent (``parent_sha256``) is the original audited beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medforget.core.checkpoint import CheckpointError, read_sidecar, sha256_file, sidecar_path

AUDIT_FILES = ("audit.json", "lm_audit.json")


class VerificationError(ValueError):
    """A file of the chain of custody changed (or cannot be checked); the message names every such file."""


@dataclass
class Check:
    path: str
    ok: bool
    message: str


def _audited(report: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """Per run, ``{model name: {"checkpoint", "checkpoint_sha256", "provenance"}}`` (quantized LM variants, which
    share their source's file, left out)."""
    runs = report.get("runs") if isinstance(report.get("runs"), list) else [report]
    out = []
    for run in runs:
        models = run.get("models", {}) if isinstance(run, dict) else {}
        out.append({name: entry for name, entry in models.items()
                    if isinstance(entry, dict) and "@" not in name and "checkpoint" in entry})
    return out


def _check_file(path: Path, expected: str, what: str) -> list[Check]:
    if not path.is_file():
        return [Check(str(path), False, f"{what} not found (give its current path: medforget verify DIR CKPT)")]
    actual = sha256_file(path)
    checks = [Check(str(path), actual == expected, f"{what}: SHA-256 {actual[:16]}…" if actual == expected else
                    f"{what} CHANGED since the audit: SHA-256 {actual[:16]}…, the audit recorded {expected[:16]}…")]
    try:
        side = read_sidecar(path)
    except CheckpointError as err:
        return [*checks, Check(str(sidecar_path(path)), False, str(err))]
    if side is not None and side != actual:
        checks.append(Check(str(path), False, f"does not match its sidecar {sidecar_path(path).name} "
                                              f"({side[:16]}…)"))
    return checks


def verify(audit_dir: str | Path, checkpoints: list[str | Path] | tuple[str | Path, ...] = ()) -> list[Check]:
    """Every check of the chain of custody of ``audit_dir`` (and of the given checkpoint files)."""
    audit_dir = Path(audit_dir)
    files = [audit_dir / name for name in AUDIT_FILES if (audit_dir / name).is_file()]
    if not files:
        raise VerificationError(f"{audit_dir}: no {' or '.join(AUDIT_FILES)} to verify")
    checks: list[Check] = []
    recorded: dict[str, list[str]] = {}  # sha256 -> where the audit says it was
    for file in files:
        try:
            expected = read_sidecar(file)
        except CheckpointError as err:
            expected, checks = None, [*checks, Check(str(sidecar_path(file)), False, str(err))]
        actual = sha256_file(file)
        if expected is None:
            checks.append(Check(str(file), False, f"no sidecar {sidecar_path(file).name}: cannot be verified"))
        else:
            checks.append(Check(str(file), actual == expected, "audit file: SHA-256 matches its sidecar"
                                if actual == expected else "audit file CHANGED: its SHA-256 no longer matches "
                                                           f"{sidecar_path(file).name}"))
        try:
            report = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as err:
            checks.append(Check(str(file), False, f"not valid JSON ({err})"))
            continue
        for run in _audited(report if isinstance(report, dict) else {}):
            for name, entry in run.items():
                digest = entry.get("checkpoint_sha256")
                if not isinstance(digest, str):
                    if entry.get("checkpoint") != "<in memory>":
                        checks.append(Check(str(file), False, f"{name}: no checkpoint SHA-256 recorded (audited "
                                                              "by a medforget without chain of custody)"))
                    continue
                recorded.setdefault(digest, []).append(str(entry["checkpoint"]))
                if not checkpoints:
                    checks += _check_file(Path(entry["checkpoint"]), digest, f"{name} checkpoint")
            parent = (run.get("unlearned", {}).get("provenance") or {}).get("parent_sha256")
            original = run.get("original", {}).get("checkpoint_sha256")
            if parent and original and parent != original:
                checks.append(Check(str(run["unlearned"]["checkpoint"]), False,
                                    f"the unlearned model was made from a checkpoint with SHA-256 {parent[:16]}…, "
                                    f"not from the original audited beside it ({original[:16]}…)"))
    for ckpt in map(Path, checkpoints):
        if not ckpt.is_file():
            checks.append(Check(str(ckpt), False, "not found"))
            continue
        digest = sha256_file(ckpt)
        if digest in recorded:
            checks += _check_file(ckpt, digest, f"audited checkpoint (recorded as {recorded[digest][0]})")
        else:
            checks.append(Check(str(ckpt), False, f"NOT a checkpoint this audit covered (SHA-256 {digest[:16]}…): "
                                                  "changed, or never audited"))
    return checks


def verify_or_raise(audit_dir: str | Path, checkpoints: list[str | Path] | tuple[str | Path, ...] = ()) -> list[Check]:
    """:func:`verify`, raising :class:`VerificationError` naming every failed file."""
    checks = verify(audit_dir, checkpoints)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError("verification failed:\n" + "\n".join(f"  {c.path}: {c.message}" for c in failed))
    return checks
