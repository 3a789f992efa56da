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
configurable :class:`Tolerances`. :class:`ClassifierAudit` supplies these measurements to the shared run flow of
:class:`medforget.audit.skeleton.Audit`; :func:`run_audit` runs it and writes ``audit.json`` (schema
:data:`SCHEMA_VERSION`), ``audit.md`` and a self-contained ``audit.html`` with plots
(:mod:`medforget.audit.classifier.report`). The forget request appears only as salted hashes; no patient ID, name or
report text is written or logged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from medforget.audit.classifier.config import REFERENCE, SCHEMA_VERSION, AuditConfig, Tolerances
from medforget.audit.classifier.criteria import RunArtifacts, evaluate_criteria
from medforget.audit.classifier.measure import evaluate_models
from medforget.audit.classifier.report import write_report
from medforget.audit.criteria import Criterion, Gap, counted_verdict
from medforget.audit.skeleton import Audit, timing_of
from medforget.audit.verdict import FAIL, NA, PASS
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


def criteria(run_artifacts: list[RunArtifacts], tolerances: Tolerances, config: AuditConfig,
             timing: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The three-way verdict of every criterion (:mod:`medforget.audit.classifier.criteria`) over the runs, plus the
    time ratio when a tolerance is set for it (a measured wall time, judged on its mean: it has no patient interval).
    """
    out = evaluate_criteria(run_artifacts, tolerances, config.bootstrap, config.seed)
    if tolerances.time_ratio is not None and timing and out:
        value = timing.get("ratio", {}).get("mean", float("nan"))
        crit = Criterion("time_ratio", "unlearning / retraining wall time (measured)", tolerances.time_ratio, "upper")
        verdict = NA if math.isnan(value) else (FAIL if crit.outside(value) else PASS)
        out.append({"criterion": crit.name, "description": crit.description, **crit.decide(Gap(value)),
                    "verdict": verdict, "reason": "a measured time, compared directly", "power": None,
                    "has_power": None, "counted": verdict != NA, "noise_floor": None, "runs": len(run_artifacts)})
    return out


def verdict_of(checks: list[dict[str, Any]]) -> dict[str, Any]:
    """The overall verdict over the counted criteria, with how many had power and the verdict counts."""
    verdict, counted, without_power = counted_verdict(checks, lambda c: c.get("has_power"))
    counts = {v: sum(c["verdict"] == v for c in counted) for v in ("pass", "inconclusive", "fail")}
    return {"verdict": verdict, "counted": len(counted), "criteria": len(checks), "no_power": without_power,
            "counts": counts}


# --- the audit -----------------------------------------------------------------------------------------------------
class ClassifierAudit(Audit):
    """The classifier audit on the skeleton's run flow: one or more runs (seeds) of original / unlearned / retrained
    checkpoints, measured by :func:`~medforget.audit.classifier.measure.evaluate_models` (arguments: :func:`run_audit`).
    """

    stem = "audit"
    schema_version = SCHEMA_VERSION

    def __init__(self, runs: list[dict[str, str | Path]], forget: list[str | Path], data_kwargs: dict[str, Any],
                 out: str | Path, config: AuditConfig | None = None, tolerances: Tolerances | None = None,
                 accelerator: str = "auto", salt_file: str | Path | None = None,
                 cli_config: dict[str, Any] | None = None) -> None:
        super().__init__(config or AuditConfig(), tolerances or Tolerances(), out, salt_file, cli_config)
        self.runs, self.forget, self.data_kwargs, self.accelerator = runs, forget, data_kwargs, accelerator
        self.reports: list[dict[str, Any]] = []
        self.artifacts: list[RunArtifacts] = []

    def prepare(self) -> None:
        runs, forget = self.runs, self.forget
        if len(forget) not in (1, len(runs)):
            raise ValueError(f"give one forget request for all runs or one per run; got {len(forget)} for {len(runs)} "
                             f"runs")
        self.requests = [str(f) for f in forget] * len(runs) if len(forget) == 1 else [str(f) for f in forget]
        self.data_kwargs = {**self.data_kwargs, "selection_fraction": _selection_fraction(runs, self.data_kwargs)}
        self.datamodules: dict[str, DicomReportDataModule] = {}
        for request in dict.fromkeys(self.requests):  # every request is checked before anything is written
            self.datamodules[request] = DicomReportDataModule(**{**self.data_kwargs, "mode": "evaluate",
                                                                 "forget": request})
            self.datamodules[request].setup("predict")

    def measure(self, salt: str) -> None:
        for i, (checkpoints, request) in enumerate(zip(self.runs, self.requests, strict=True)):
            art = RunArtifacts()
            print(f"auditing run {i + 1}/{len(self.runs)}: {', '.join(checkpoints)}", flush=True)
            self.reports.append(evaluate_models(checkpoints, self.datamodules[request], accelerator=self.accelerator,
                                                config=self.config, data_kwargs=self.data_kwargs,
                                                reference_dir=self.out / "reference_models", artifacts=art, salt=salt))
            self.artifacts.append(art)

    def data(self) -> dict[str, Any]:
        return self.reports[0]["data"]

    def forget_ids(self) -> list[list[str]]:
        return [read_patient_ids(request) for request in dict.fromkeys(self.requests)]

    def results(self) -> dict[str, Any]:
        return {"runs": self.reports, "summary": aggregate([{k: r[k] for k in ("models", "gaps_to_retrained") if k in r}
                                                            for r in self.reports])}

    def timing(self) -> dict[str, Any]:
        return aggregate([timing_of(r["models"], REFERENCE, "retrain_seconds") for r in self.reports])

    def criteria(self, timing: dict[str, Any]) -> list[dict[str, Any]]:
        return criteria(self.artifacts, self.tolerances, self.config, timing)

    def verdict(self, checks: list[dict[str, Any]]) -> dict[str, Any]:
        decision = verdict_of(checks)
        return {"verdict": decision["verdict"], "verdict_detail": decision}

    def closing(self) -> dict[str, Any]:
        return {"per_patient": [{m: r["models"][m]["per_patient"] for m in r["models"]
                                 if "per_patient" in r["models"][m]} for r in self.reports]}

    def write_documents(self, report: dict[str, Any]) -> dict[str, Any]:
        return write_report(report, self.artifacts[0], self.out, plots=self.config.plots)


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
    return ClassifierAudit(runs, forget, data_kwargs, out, config, tolerances, accelerator, salt_file, cli_config).run()


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
