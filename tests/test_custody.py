"""Chain of custody: SHA-256 sidecars on every exported checkpoint, the parent's SHA-256 in an unlearned model's
provenance, the audited checkpoints' SHA-256 in audit.json, and ``medforget verify`` catching a one-byte change."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medforget.cli import main
from medforget.commands import evaluate
from medforget.core.checkpoint import read_checkpoint, read_sidecar, sha256_file, sidecar_path
from medforget.core.verify import VerificationError, verify, verify_or_raise
from medforget.systems.classifier import export_classifier, load_classifier
from tests.conftest import TINY_DATA


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_sha256_file_and_sidecar(trained_ckpt, unlearned_ckpt, tmp_path):
    assert sha256_file(trained_ckpt) == hashlib.sha256(trained_ckpt.read_bytes()).hexdigest()
    for ckpt in (trained_ckpt, unlearned_ckpt):
        side = sidecar_path(ckpt)
        assert side.name == "model.ckpt.sha256"
        assert side.read_text() == f"{sha256_file(ckpt)}  model.ckpt\n"  # the sha256sum format
        assert read_sidecar(ckpt) == sha256_file(ckpt)
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--status", sidecar_path(trained_ckpt).name],
                       cwd=trained_ckpt.parent, check=True)
    # re-export over an existing file: the sidecar follows the new bytes; no temporary file is left
    model = load_classifier(trained_ckpt)
    path = export_classifier(model, tmp_path / "m.ckpt", provenance={"v": 1})
    first = read_sidecar(path)
    export_classifier(model, path, provenance={"v": 2}, overwrite=True)
    assert read_sidecar(path) == sha256_file(path) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.ckpt.sha256"]


def test_unlearned_provenance_names_its_parent(trained_ckpt, unlearned_ckpt):
    provenance = read_checkpoint(unlearned_ckpt)["medforget"]["provenance"]
    assert provenance["parent_sha256"] == sha256_file(trained_ckpt)
    assert "parent_sha256" not in read_checkpoint(trained_ckpt)["medforget"]["provenance"]


@pytest.fixture(scope="module")
def audit(tiny_hospital, forget_file, trained_ckpt, unlearned_ckpt, retrained_ckpt, tmp_path_factory):
    """An audit of private copies of the three checkpoints (the session fixtures are never modified)."""
    root = tmp_path_factory.mktemp("custody")
    copies = {}
    for name, ckpt in (("original", trained_ckpt), ("unlearned", unlearned_ckpt), ("retrained", retrained_ckpt)):
        (root / name).mkdir()
        copies[name] = Path(shutil.copy(ckpt, root / name / "model.ckpt"))
        shutil.copy(sidecar_path(ckpt), root / name)
    out = root / "audit"
    evaluate([*(f"--{name}={path}" for name, path in copies.items()), f"--forget={forget_file}",
              f"--data.manifest={tiny_hospital}", *TINY_DATA, f"--out={out}", "--accelerator=cpu",
              "--audit.relearn_steps=0", "--audit.quantization=[]", "--audit.plots=false", "--audit.bootstrap=0"])
    return out, copies


def test_audit_records_checkpoint_hashes(audit):
    out, copies = audit
    report = json.loads((out / "audit.json").read_text())
    for name, path in copies.items():
        assert report["runs"][0]["models"][name]["checkpoint_sha256"] == sha256_file(path)
    assert read_sidecar(out / "audit.json") == sha256_file(out / "audit.json")
    checks = verify_or_raise(out)
    assert all(c.ok for c in checks)
    assert {c.path for c in checks} >= {str(out / "audit.json"), *map(str, copies.values())}


def test_verify_cli_passes_and_checks_a_deployed_copy(audit, tmp_path, capsys):
    out, copies = audit
    deployed = Path(shutil.copy(copies["unlearned"], tmp_path / "deployed.ckpt"))
    main(["verify", str(out), str(deployed)])
    assert "nothing changed" in capsys.readouterr().out
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"not audited")
    with pytest.raises(SystemExit, match="other.ckpt: NOT a checkpoint this audit covered"):
        main(["verify", str(out), str(other)])


@pytest.mark.parametrize("target", ["unlearned", "audit.json"])
def test_verify_catches_one_flipped_byte(audit, tmp_path, target):
    out, copies = audit
    # a private copy of the audit directory and checkpoints, so the fixture stays intact for the other tests
    root = tmp_path / "copy"
    shutil.copytree(out.parent, root)
    audit_dir = root / out.name
    report = json.loads((audit_dir / "audit.json").read_text())
    for entry in report["runs"][0]["models"].values():  # point the copied audit at the copied checkpoints...
        entry["checkpoint"] = str(root / Path(entry["checkpoint"]).relative_to(out.parent))
    text = json.dumps(report)
    (audit_dir / "audit.json").write_text(text)
    (audit_dir / "audit.json.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  audit.json\n")
    assert all(c.ok for c in verify(audit_dir))  # ...and re-seal it: the copy verifies
    changed = audit_dir / "audit.json" if target == "audit.json" else root / target / "model.ckpt"
    flip_byte(changed, offset=len(text) // 2 if target == "audit.json" else None)
    failed = [c for c in verify(audit_dir) if not c.ok]
    assert failed and all(c.path == str(changed) for c in failed), failed
    with pytest.raises(VerificationError, match=str(changed)):
        verify_or_raise(audit_dir)
    done = subprocess.run([sys.executable, "-m", "medforget", "verify", str(audit_dir)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode != 0 and str(changed) in done.stderr and "CHANGED" in done.stderr


def test_verify_catches_an_unlearned_model_from_another_original(audit, tmp_path):
    out, _ = audit
    report = json.loads((out / "audit.json").read_text())
    report["runs"][0]["models"]["unlearned"]["provenance"]["parent_sha256"] = "0" * 64
    (tmp_path / "audit.json").write_text(json.dumps(report))
    (tmp_path / "audit.json.sha256").write_text(f"{sha256_file(tmp_path / 'audit.json')}  audit.json\n")
    failed = [c for c in verify(tmp_path) if not c.ok]
    assert len(failed) == 1 and "not from the original audited beside it" in failed[0].message


def test_verify_needs_an_audit_and_its_sidecar(audit, tmp_path):
    with pytest.raises(VerificationError, match="no audit.json or lm_audit.json"):
        verify(tmp_path)
    out, _ = audit
    shutil.copy(out / "audit.json", tmp_path / "audit.json")
    failed = [c for c in verify(tmp_path) if not c.ok]
    assert [c.path for c in failed] == [str(tmp_path / "audit.json")] and "no sidecar" in failed[0].message
