"""The audit: are the forget patients really gone?

For every run (original / unlearned / retrained checkpoints trained with one seed) and every model, on forget, retain,
test and val patients:

- utility of each head (fused, image, text): macro AUC, macro F1, accuracy (:mod:`medforget.audit.utility`);
- the membership-inference suite (:mod:`medforget.audit.classifier.mia`; forget = questioned members, test =
  non-members);
- robustness (:mod:`medforget.audit.robustness`): quantization recovery and the relearning attack;
- every number also as the gap to the retrained model, which is the target (not "lower is better");
  one run is :func:`medforget.audit.classifier.measure.evaluate_models`.

Several runs give mean ± std (:func:`aggregate`). :func:`criteria` turns the means into pass/fail verdicts with
configurable :class:`Tolerances`. :func:`run_audit` writes ``audit.json`` (schema :data:`SCHEMA_VERSION`),
``audit.md`` and a self-contained ``audit.html`` with plots (:mod:`medforget.audit.classifier.report`). The forget
request appears only as salted hashes; no patient ID, name or report text is written or logged.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from medforget.audit.classifier.config import (
    REFERENCE,
    SCHEMA_VERSION,
    AuditConfig,
    Tolerances,
)
from medforget.audit.classifier.criteria import RunArtifacts, evaluate_criteria
from medforget.audit.classifier.measure import evaluate_models
from medforget.audit.verdict import NA, decide, overall
from medforget.core.io import write_json
from medforget.core.privacy import HASH_SCHEME, load_or_create_salt, salted_hashes
from medforget.core.provenance import code_version
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import read_patient_ids

log = logging.getLogger("medforget")





# --- several runs --------------------------------------------------------------------------------------------------
def aggregate(values: list[Any]) -> Any:
    """Mean ± std over runs of every numeric leaf of structurally equal dicts: a number becomes
    ``{"mean", "std", "n"}`` (NaN runs left out; std is the sample std, 0 for one run); numeric lists of equal length
    are averaged element-wise; other leaves are dropped."""
    first = values[0]
    if isinstance(first, dict):
        keys_ = [k for k in first if all(isinstance(v, dict) and k in v for v in values)]
        out = {k: aggregate([v[k] for v in values]) for k in keys_}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(first, bool) or first is None:
        return None
    if isinstance(first, (int, float)):
        x = np.array([float(v) for v in values])
        x = x[~np.isnan(x)]
        if len(x) == 0:
            return {"mean": float("nan"), "std": float("nan"), "n": 0}
        return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0, "n": len(x)}
    if isinstance(first, list) and first and all(isinstance(v, list) and len(v) == len(first) for v in values):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for v in values for x in v):
            return [float(np.nanmean([v[i] for v in values])) if not all(
                math.isnan(float(v[i])) for v in values) else float("nan") for i in range(len(first))]
    return None


def mean_of(summary: dict, *path: str) -> float:
    """The mean at ``path`` of an :func:`aggregate` summary (``nan`` if absent)."""
    node: Any = summary
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return float("nan")
        node = node[p]
    return float(node["mean"]) if isinstance(node, dict) and "mean" in node else float("nan")


def criteria(run_artifacts: list[RunArtifacts], tolerances: Tolerances, config: AuditConfig,
             timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The three-way verdict of every criterion (:mod:`medforget.audit.classifier.criteria`) over the runs, plus the
    time
    ratio when a tolerance is set for it (a measured wall time, judged on its mean: it has no patient interval)."""
    out = evaluate_criteria(run_artifacts, tolerances, config.bootstrap, config.seed)
    if tolerances.time_ratio is not None and timing and out:
        value = timing.get("ratio", {}).get("mean", float("nan"))
        verdict = NA if math.isnan(value) else ("pass" if value <= tolerances.time_ratio else "fail")
        out.append({"criterion": "time_ratio", "description": "unlearning / retraining wall time (measured)",
                    **decide(value, None, tolerances.time_ratio, "upper"), "verdict": verdict,
                    "reason": "a measured time, compared directly", "power": None, "has_power": None,
                    "counted": verdict != NA, "noise_floor": None, "runs": len(run_artifacts)})
    return out


def verdict_of(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The overall verdict over the counted criteria, with how many had power and the verdict counts."""
    counted = [c for c in checks if c.get("counted")]
    without_power = [c["criterion"] for c in checks if c.get("has_power") is False]
    verdict = overall([c["verdict"] for c in counted])
    counts = {v: sum(c["verdict"] == v for c in counted) for v in ("pass", "inconclusive", "fail")}
    return {"verdict": verdict, "counted": len(counted), "criteria": len(checks), "no_power": without_power,
            "counts": counts}


def _timing(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_run = []
    for run in runs:
        models = run["models"]
        unlearn = models.get("unlearned", {}).get("provenance", {}).get("unlearn_seconds", float("nan"))
        retrain = models.get(REFERENCE, {}).get("provenance", {}).get("fit_seconds", float("nan"))
        original = models.get("original", {}).get("provenance", {}).get("fit_seconds", float("nan"))
        per_run.append({"unlearn_seconds": unlearn, "retrain_seconds": retrain, "original_train_seconds": original,
                        "ratio": unlearn / retrain if retrain and not math.isnan(retrain) else float("nan")})
    return aggregate(per_run)


# --- privacy and provenance ----------------------------------------------------------------------------------------


def forget_request_record(requests: list[str | Path], salt: str) -> dict[str, Any]:
    """The forget request(s) as sorted salted hashes (no raw IDs)."""
    hashed = []
    for request in requests:
        ids = read_patient_ids(request)
        hashed.append(salted_hashes(ids, salt))
    record: dict[str, Any] = {"hash": HASH_SCHEME, "patients": [len(h) for h in hashed],
                              "salted_hashes": hashed[0] if len(hashed) == 1 else hashed}
    return record


# --- the audit -----------------------------------------------------------------------------------------------------
def run_audit(
    runs: list[dict[str, str | Path]],
    forget: list[str | Path],
    data_kwargs: dict[str, Any],
    out: str | Path,
    config: AuditConfig | None = None,
    tolerances: Tolerances | None = None,
    accelerator: str = "auto",
    salt_file: str | Path | None = None,
    cli_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Audit one or more runs and write ``audit.json``, ``audit.md``, ``audit.html`` (and ``plots/``) to ``out``.

    Args:
        runs: One ``{"original"|"unlearned"|"retrained": checkpoint}`` dict per run (seed).
        forget: The forget request file, one for all runs or one per run.
        data_kwargs: Data options (as in training), without ``mode``/``forget``.
        out: Output directory.
        config: What to measure (:class:`AuditConfig`).
        tolerances: Pass/fail tolerances (:class:`Tolerances`).
        accelerator: Lightning accelerator for prediction.
        salt_file: Secret salt of the forget-request hashes (created if missing; default ``<out>/private/salt``).
        cli_config: The configuration to record in the report.
    """
    from medforget.audit.classifier.report import write_report

    config = config or AuditConfig()
    tolerances = tolerances or Tolerances()
    out = Path(out)
    if len(forget) not in (1, len(runs)):
        raise ValueError(f"give one forget request for all runs or one per run; got {len(forget)} for {len(runs)} runs")
    requests = [str(f) for f in forget] * len(runs) if len(forget) == 1 else [str(f) for f in forget]
    data_kwargs = {**data_kwargs, "selection_fraction": _selection_fraction(runs, data_kwargs)}
    datamodules: dict[str, DicomReportDataModule] = {}
    for request in dict.fromkeys(requests):  # every request is checked before anything is written
        datamodules[request] = DicomReportDataModule(**{**data_kwargs, "mode": "evaluate", "forget": request})
        datamodules[request].setup("predict")
    salt = load_or_create_salt(salt_file or out / "private" / "salt")
    run_reports, artifacts = [], []
    start = time.perf_counter()
    for i, (checkpoints, request) in enumerate(zip(runs, requests, strict=True)):
        art = RunArtifacts()
        print(f"auditing run {i + 1}/{len(runs)}: {', '.join(checkpoints)}", flush=True)
        run_reports.append(evaluate_models(checkpoints, datamodules[request], accelerator=accelerator, config=config,
                                           data_kwargs=data_kwargs, reference_dir=out / "reference_models",
                                           artifacts=art, salt=salt))
        artifacts.append(art)
    summary = aggregate([{k: r[k] for k in ("models", "gaps_to_retrained") if k in r} for r in run_reports])
    timing = _timing(run_reports)
    checks = criteria(artifacts, tolerances, config, timing)
    decision = verdict_of(checks)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code": code_version(),
        "config": {"audit": asdict(config), "tolerances": asdict(tolerances), "cli": cli_config or {}},
        "data": run_reports[0]["data"],
        "forget_request": forget_request_record(list(dict.fromkeys(requests)), salt),
        "runs": run_reports,
        "summary": summary,
        "timing": timing,
        "criteria": checks,
        "verdict": decision["verdict"],
        "verdict_detail": decision,
        "per_patient": [{m: r["models"][m]["per_patient"] for m in r["models"] if "per_patient" in r["models"][m]}
                        for r in run_reports],
        "audit_seconds": time.perf_counter() - start,
    }
    write_json(report, out / "audit.json")
    write_report(report, artifacts[0], out, plots=config.plots)
    return report


def _selection_fraction(runs: list[dict[str, str | Path]], data_kwargs: dict[str, Any]) -> float:
    """The forget patients set aside for checkpoint selection are never audited: their share comes from the unlearned
    checkpoints' provenance (all runs must agree), else from ``--data.selection_fraction``."""
    from medforget.core.checkpoint import read_checkpoint

    recorded = set()
    for run in runs:
        if "unlearned" in run:
            split = read_checkpoint(run["unlearned"]).get("medforget", {}).get("provenance", {}).get("selection_split")
            if split is not None:
                recorded.add(float(split["fraction"]))
    if len(recorded) > 1:
        raise ValueError(f"the unlearned checkpoints set aside different shares of the forget patients for checkpoint "
                         f"selection ({sorted(recorded)}); audit them separately")
    given = float(data_kwargs.get("selection_fraction", 0.25))
    if recorded:
        fraction = recorded.pop()
        if fraction != given:
            log.info("auditing without the %.2f of the forget patients that checkpoint selection saw (from the "
                     "unlearned checkpoint; --data.selection_fraction %.2f ignored)", fraction, given)
        return fraction
    return given


# --- console -------------------------------------------------------------------------------------------------------


