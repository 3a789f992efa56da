"""Compare original / unlearned / retrained models on forget, retain and test patients.

Writes ``metrics.json`` (versioned schema) and returns the printed table. Every number is reported as a value and as
the gap to the retrained model, which is the target (not "lower is better").
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from medforget.checkpoint import CheckpointError, load_classifier
from medforget.classifier import FusionClassifier
from medforget.datamodules import keys
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.evaluation.mia import MembershipAttack
from medforget.evaluation.utility import classification_metrics

SCHEMA_VERSION = 1
REFERENCE = "retrained"


def predict(model: FusionClassifier, loader, trainer: L.Trainer) -> dict[str, Any]:
    """Logits of every head, labels and manifest indices for one loader."""
    outputs = trainer.predict(model, loader)
    return {
        "logits": {h: torch.cat([o["logits"][h] for o in outputs]) for h in outputs[0]["logits"]},
        keys.LABEL: torch.cat([o[keys.LABEL] for o in outputs]),
        keys.INDEX: torch.cat([o[keys.INDEX] for o in outputs]),
    }


def check_split(model: FusionClassifier, datamodule: DicomReportDataModule, path: str | Path) -> None:
    """The datamodule must reproduce the training split the model was trained on."""
    expected = getattr(model, "provenance", {}).get("split_fingerprint")
    if expected is not None and expected != datamodule.split_fingerprint:
        data = model.provenance.get("data", {})
        raise CheckpointError(
            f"{path}: the data split differs from the one this model was trained on; pass the same data options "
            f"as in training (manifest, seed, val_fraction, test_fraction): trained with {data}"
        )


def evaluate_models(
    checkpoints: dict[str, str | Path],
    datamodule: DicomReportDataModule,
    attacks: tuple[str, ...] = ("LossAttack",),
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Metrics of each model on each part, loss-threshold MIA (forget = members vs test = non-members), gaps.

    Args:
        checkpoints: ``{"original": path, "unlearned": path, "retrained": path}`` (any subset; gaps need
            ``retrained``).
        datamodule: In ``evaluate`` mode with the forget request.
        attacks: Names of registered membership attacks.
        accelerator: Lightning accelerator for prediction.
    """
    datamodule.setup("predict")
    loaders = datamodule.evaluation_dataloaders()
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    results: dict[str, Any] = {}
    for name, path in checkpoints.items():
        model = load_classifier(path)
        check_split(model, datamodule, path)
        outputs = {part: predict(model, loader, trainer) for part, loader in loaders.items()}
        metrics = {
            part: {head: classification_metrics(logits, out[keys.LABEL]) for head, logits in out["logits"].items()}
            for part, out in outputs.items()
        }
        mia = {}
        if "forget" in outputs and "test" in outputs:
            members = (outputs["forget"]["logits"]["fused"], outputs["forget"][keys.LABEL])
            nonmembers = (outputs["test"]["logits"]["fused"], outputs["test"][keys.LABEL])
            for attack in attacks:
                mia[attack] = MembershipAttack.registry[attack]().evaluate(members, nonmembers)
        results[name] = {
            "checkpoint": str(path),
            "provenance": getattr(model, "provenance", {}),
            "metrics": metrics,
            "mia": mia,
        }
    report = {
        "schema_version": SCHEMA_VERSION,
        "data": {"manifest_sha256": datamodule.dataset_hash(), "parts": datamodule.summary()},
        "models": results,
    }
    if REFERENCE in results:
        report["gaps_to_retrained"] = {
            name: _gaps(res, results[REFERENCE]) for name, res in results.items() if name != REFERENCE
        }
    return report


def _gaps(result: dict, reference: dict) -> dict:
    gaps: dict[str, Any] = {"metrics": {}, "mia": {}}
    for part, heads in result["metrics"].items():
        gaps["metrics"][part] = {
            head: {k: v - reference["metrics"][part][head][k] for k, v in values.items()}
            for head, values in heads.items()
        }
    for attack, values in result["mia"].items():
        gaps["mia"][attack] = {k: values[k] - reference["mia"][attack][k] for k in ("auc", "member_rate")}
    return gaps


COLUMNS = (
    ("forget", "auc"), ("forget", "f1"), ("forget", "accuracy"),
    ("retain", "auc"), ("retain", "accuracy"),
    ("test", "auc"), ("test", "f1"), ("test", "accuracy"),
)


def format_table(report: dict[str, Any], head: str = "fused") -> str:
    """A plain-text table of the fused-head metrics and the loss-MIA AUC, with gaps to the retrained model."""
    names = list(report["models"])
    titles = [f"{part} {metric[:3].upper() if metric != 'accuracy' else 'acc'}" for part, metric in COLUMNS]
    titles.append("MIA AUC")
    rows = []

    def fmt(x: float, signed: bool = False) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        return f"{x:+.3f}" if signed else f"{x:.3f}"

    for name in names:
        res = report["models"][name]
        cells = [fmt(res["metrics"].get(part, {}).get(head, {}).get(metric, float("nan"))) for part, metric in COLUMNS]
        cells.append(fmt(res["mia"].get("LossAttack", {}).get("auc", float("nan"))))
        rows.append([name, *cells])
    for name, gaps in report.get("gaps_to_retrained", {}).items():
        cells = [fmt(gaps["metrics"].get(part, {}).get(head, {}).get(metric, float("nan")), True)
                 for part, metric in COLUMNS]
        cells.append(fmt(gaps["mia"].get("LossAttack", {}).get("auc", float("nan")), True))
        rows.append([f"Δ {name} vs retrained", *cells])
    header = ["model", *titles]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(cells))

    sep = "-" * len(line(header))
    return "\n".join([line(header), sep, *[line(r) for r in rows]])


def format_heads(report: dict[str, Any], part: str = "test", metric: str = "auc") -> str:
    """Per-head (fused / image / text) ``metric`` on ``part`` for every model."""
    lines = [f"{part} {metric.upper()} by head"]
    for name, res in report["models"].items():
        heads = res["metrics"].get(part, {})
        lines.append(f"  {name:<10} " + "  ".join(f"{h} {v[metric]:.3f}" for h, v in heads.items()))
    return "\n".join(lines)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=float)
    os.replace(tmp, path)
    return path
