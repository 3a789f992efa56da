"""Leaderboard of the unlearning methods against the audit, at realistic request sizes (issue 14).

For every seed: a synthetic hospital (``--patients``, ``--image-size`` px) and one original model. Then

1. **Tuning** (``api.tune``, i.e. ``medforget tune``; the same trial budget ``--trials`` for every method that
   trains): each method is tuned once per seed on a *tuning request*, 5% of the training patients drawn apart from
   every audited request, on validation data only (against the original: its forget-selection patients, a retain
   sample and the val patients). The tuning request is never audited, so ``--tuning-selection`` (90%) of it is the
   objective's forget-selection part, not the quarter a real request can spare. The best settings
   (``<out>/seed<s>/tune/<method>/best.yaml``, its epochs those the best trial trained) are used for every setting
   of that seed. Training-free methods run from their ``configs/unlearn/*.yaml`` (not tuned).
2. **Settings**: nested forget requests of 5% and 1% of the training patients and a single patient (disjoint from
   the tuning request). For each: ``--retrains`` models retrained without the request with different seeds (all but
   the last are the audit's targets; the last is audited in the unlearned model's place as the row ``Retrain``,
   whose average |gap| is the **noise floor**), and every method unlearns the original with its tuned config,
   *blind* by default (``--request-selection 0``): the tuned epochs, the last weights, no checkpoint selection on the
   request, so every forget patient is audited and no epoch is chosen on a handful of patients whose own difficulty
   decides it. ``--request-selection 0.25`` sets a quarter of each request aside for checkpoint selection instead
   (requests of fewer than 4 patients never do).
3. **Audit**: ``api.evaluate`` (the ``evaluate`` verb) of each model against every target (one run per target: the
   intervals hold the target's seed noise, and the targets' own gap is the verdict's noise floor), with
   ``--audit.reference_models K`` (LiRA/RMIA and the per-patient test; one reference set per seed, trained without
   the 5% request and reused by the nested smaller ones): the three-way verdict and the per-patient pass share.

Rows of ``leaderboard.json`` (one per method and setting, over seeds): ``avg_gap`` (mean |gap| to the retrained targets
over forget AUC, forget F1, test AUC and the patient-level loss-attack MIA AUC; NaN terms, e.g. a forget AUC of a
single-class patient, are left out), ``noise_floor`` (the same for the last retrain), ``gap_over_floor``,
``retain_acc_gap`` (|retain accuracy - the targets'|), ``time_ratio`` (unlearning fit time / the shortest fit
time of the setting's retrained models, :func:`retrain_seconds`; tuning is reported apart as ``tuning_time_ratio``,
RefDistill's own reference models, trained before its unlearning runs and reused by every setting of a seed, as
``reference_time_ratio``), ``pass`` / ``inconclusive`` / ``fail`` (verdict counts over seeds),
``per_patient_pass_share`` (mean over seeds), ``patients`` and ``image_size``.

    python benchmarks/leaderboard.py                  # 1,000 patients, 32 px, 3 settings x 3 seeds, every method
    python benchmarks/leaderboard.py --accelerator gpu
    python benchmarks/leaderboard.py --quick          # 120 patients, FineTune + RefDistill, 1 seed, 5%: a smoke run
    python benchmarks/leaderboard.py --methods RefDistill SCRUB --seeds 0 1 2 --settings 5pct

``--unlearn-epoch forget`` makes each unlearning epoch one pass over the forget request (a few steps) instead of over
the bounded retain sample, in tuning and in the audited runs alike, and ``--max-epochs-high`` caps the tuned epochs:
together they bound an unlearning run's steps. Each is a protocol of its own: a row is replaced only by one of the
same method, setting, trial budget, epoch unit and epoch cap (RESULTS.md, third pass: capping NegGradPlus at 2 epochs
saved a fifth of its time and cost 0.10 of retain accuracy).

``--timing`` (run alone on the machine, after the 5pct setting) times each method's blind unlearning against one
retraining, one at a time; ``--collect`` then adds ``quiet_time_ratio`` (NaN where not timed) beside ``time_ratio``.
A rerun with the same ``--out`` reuses every finished model, study and audit; ``--collect`` runs nothing and
tabulates the audits finished so far (what is missing is listed in ``table.md`` and in each row's ``missing``);
``--write-configs`` writes each tuned method's chosen settings to ``configs/unlearn/tuned/`` (the seed whose study
reached the lowest validation score).
The full run writes ``benchmarks/results/leaderboard.json`` (``--quick`` writes ``<out>/leaderboard.json`` only),
``<out>/table.md`` and ``<out>/raw.json`` (every audited model).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from multimodal import quiet  # noqa: E402

from medforget import api  # noqa: E402
from medforget.core.checkpoint import read_checkpoint  # noqa: E402
from medforget.core.io import atomic_write_text  # noqa: E402
from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.sampling import RETAIN_PER_FORGET  # noqa: E402
from medforget.datamodules.splits import MIN_AUDIT_PATIENTS, write_patient_ids  # noqa: E402
from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital  # noqa: E402
from medforget.methods.classifier import get_method, list_methods  # noqa: E402
from medforget.methods.classifier.ref_distill import train_method_references  # noqa: E402

SETTINGS = {"5pct": 0.05, "1pct": 0.01, "1patient": None}  # largest first: the audit's reference set is reused
TARGET = ("forget_auc", "forget_f1", "test_auc", "patient_mia_auc")
RETRAIN_ROW = "Retrain"
MIN_SELECTION_PATIENTS = 4  # smaller requests set none aside for checkpoint selection
#: How a tuned config is applied blind: no checkpoint selection (the last weights) and so no validation epochs.
BLIND_FLAGS = ["--checkpoint.monitor=null", "--trainer.limit_val_batches=0"]
RUN_FLAGS = ("accelerator", "devices", "enable_progress_bar", "logger", "default_root_dir")  # not in tuned configs


def fit_seconds(path: str | Path) -> float:
    provenance = read_checkpoint(path)["medforget"]["provenance"]
    return float(provenance.get("fit_seconds", provenance.get("unlearn_seconds", math.nan)))


def retrain_seconds(retrained: list[Path]) -> float:
    """The denominator of ``time_ratio``: the shortest fit time of the setting's retrained models. Wall-clock times
    on a shared machine grow with what runs beside them (the same retraining took 125 s and 289 s on this board), so
    the least contended retraining is the fairest measure of its cost, and contention then inflates a method's
    ratio, never deflates it."""
    return min(fit_seconds(p) for p in retrained)


def config_of(method: str) -> Path | None:
    """The ``configs/unlearn/*.yaml`` of a registered method."""
    import yaml

    for path in sorted((ROOT / "configs" / "unlearn").glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if str(model.get("class_path", "")).rsplit(".", 1)[-1] == method:
            return path
    return None


def requests_for(train_patients: list[str], seed: int) -> tuple[list[str], dict[str, list[str]]]:
    """The tuning request (5%) and the nested audited requests, disjoint from it, seeded."""
    order = [str(p) for p in np.random.default_rng(seed).permutation(sorted(train_patients))]
    n5 = max(2, round(0.05 * len(order)))
    n1 = max(1, round(0.01 * len(order)))
    tuning, audited = order[:n5], order[n5:2 * n5]
    return sorted(tuning), {"5pct": sorted(audited), "1pct": sorted(audited[:n1]), "1patient": [audited[0]]}


def model_row(report: dict[str, Any], name: str, run: int = 0) -> dict[str, float]:
    """The row's metrics of one model in one run of the audit; an undefined one (``NaN`` in memory, ``null`` in
    ``audit.json``) is NaN."""
    result = report["runs"][run]["models"][name]
    metrics = result["metrics"]
    values = {
        "forget_auc": metrics["forget"]["fused"]["auc"],
        "forget_f1": metrics["forget"]["fused"]["f1"],
        "test_auc": metrics["test"]["fused"]["auc"],
        "retain_acc": metrics["retain"]["fused"]["accuracy"],
        "patient_mia_auc": result["mia"]["LossAttack"]["patient_auc"],
    }
    return {k: math.nan if v is None else float(v) for k, v in values.items()}


def avg_gap(row: dict[str, float], reference: dict[str, float]) -> float:
    gaps = [abs(row[k] - reference[k]) for k in TARGET if not (math.isnan(row[k]) or math.isnan(reference[k]))]
    return statistics.mean(gaps) if gaps else math.nan


def _once(step: Callable[..., Path], out: Path, **kwargs: Any) -> Path:
    """``out/model.ckpt`` if it exists (a finished step of an earlier run), else ``step(out=out, **kwargs)`` (an API
    function, which writes it)."""
    path = out / "model.ckpt"
    return path if path.exists() else step(out=out, **kwargs)


def run_settings(args: argparse.Namespace, hospital: Path) -> dict[str, Any]:
    """The ``api`` arguments every step of a seed shares: its hospital, the accelerator, no progress bar."""
    return {"manifest": hospital, "accelerator": args.accelerator, "trainer": {"enable_progress_bar": False}}


def unlearn_data(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` of the unlearning runs (tuning trials, audited requests, timing): with ``--unlearn-epoch`` (what one
    epoch is: a pass over the retain sample, or over the forget request) and ``--retain-per-forget`` (retain studies
    per forget study in an epoch)."""
    extra = {"unlearn_epoch": args.unlearn_epoch, "retain_per_forget": args.retain_per_forget}
    return {**data, **{k: v for k, v in extra.items() if v is not None}}


def method_settings(args: argparse.Namespace, root: Path, method: str) -> dict[str, Any] | None:
    """The run-specific ``--model.init_args`` of a method: RefDistill's own references (K, seed 1000, not the
    audit's), cached per seed."""
    if method == "RefDistill":
        return {"reference_dir": root / "method_references", "num_references": args.method_references}
    return None


def references_for(args: argparse.Namespace, root: Path, original: Path, hospital: Path, forget: Path,
                   seed: int, out: Path) -> None:
    """Train (or find cached) RefDistill's own reference models for a request before its unlearning run into ``out``,
    so that the run's fit time is the unlearning alone (they are reported apart as ``reference_time_ratio``);
    nothing when that run has finished."""
    if (out / "model.ckpt").exists():
        return
    request_dm = DicomReportDataModule(str(hospital), mode="unlearn", forget=str(forget), image_size=args.image_size,
                                       seed=seed, selection_fraction=0.0)
    request_dm.setup("fit")
    with quiet(args.quiet):
        train_method_references(original, request_dm, args.method_references, root / "method_references",
                                accelerator="gpu" if args.accelerator in ("gpu", "cuda") else "cpu")


def run_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    root = args.out / f"seed{seed}"
    hospital = root / "hospital" / "manifest.csv"
    if not hospital.exists():
        hospital = generate_hospital(root / "hospital", SyntheticConfig(
            num_patients=args.patients, image_size=args.image_size, seed=seed), overwrite=True)
    data = {"image_size": args.image_size, "seed": seed}
    run = run_settings(args, hospital)
    print(f"seed {seed}: original model ({args.patients} patients, {args.image_size} px)", flush=True)
    with quiet(args.quiet):
        original = _once(api.train, root / "original", epochs=args.epochs, seed=seed, data=data, **run)
    dm = DicomReportDataModule(str(hospital), image_size=args.image_size, seed=seed, cache_rate=0.0)
    dm.setup()
    tuning, requests = requests_for(list(set(dm.df.loc[dm.indices["train"], "patient_id"].astype(str))), seed)
    tuning_file = write_patient_ids(tuning, root / "tuning_request.txt")
    # most of the tuning request is the objective's (it is never audited), leaving the datamodule its 2 others
    tuning_selection = min(args.tuning_selection, (len(tuning) - MIN_AUDIT_PATIENTS) / len(tuning))

    configs: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        config = config_of(method)
        if get_method(method).one_shot:
            configs[method] = {"config": config, "tuned": False, "tuning_seconds": 0.0}
            continue
        with quiet(args.quiet):
            summary = api.tune(original, tuning_file, method, root / "tune" / method, n_trials=args.trials,
                               sampler_seed=seed, max_epochs_high=args.max_epochs_high,
                               data={**unlearn_data(args, data), "selection_fraction": tuning_selection},
                               method_args=method_settings(args, root, method), **run)
        configs[method] = {"config": Path(summary["best_yaml"]), "tuned": True, "best_params": summary["best_params"],
                           "validation_score": summary["best_value"],
                           "tuning_seconds": tuning_seconds(summary["trials_csv"])}
        print(f"  tuned {method}: {args.trials} trials, best validation score {summary['best_value']:.4f} "
              f"{summary['best_params']}", flush=True)

    raw: list[dict[str, Any]] = []
    for setting in args.settings:
        request = requests[setting]
        base = root / setting
        forget = write_patient_ids(request, base / "forget.txt")
        selection = args.request_selection if len(request) >= MIN_SELECTION_PATIENTS else 0.0
        retrained = []
        for r in range(args.retrains):
            with quiet(args.quiet):
                retrained.append(_once(api.train, base / f"retrained{r}", exclude_patients=forget,
                                       epochs=args.epochs, seed=seed + 1000 * r, data=data, **run))
        retrain_s = retrain_seconds(retrained)
        targets = retrained[:-1]  # the audit's targets; the last retrained model is audited as the Retrain row
        unlearned = {RETRAIN_ROW: retrained[-1]}
        # its own references first, so that time_ratio is the unlearning alone
        if "RefDistill" in methods_at(args, setting):
            references_for(args, root, original, hospital, forget, seed, base / "RefDistill")
        request_data = {**unlearn_data(args, data), "selection_fraction": selection}
        for method in methods_at(args, setting):
            config = configs[method]["config"]  # the tuned best.yaml or the method's config names the method
            with quiet(args.quiet):
                unlearned[method] = _once(api.unlearn, base / method, ckpt=original, forget=forget,
                                          method=None if config else method, config=config, data=request_data,
                                          method_args=method_settings(args, root, method), seed=seed, **run,
                                          extra_args=[] if selection else BLIND_FLAGS)
        for name, path in unlearned.items():
            audit_dir = base / "audit" / name
            if (audit_dir / "audit.json").exists():
                report = json.loads((audit_dir / "audit.json").read_text())
            else:
                with quiet(args.quiet):
                    report = api.evaluate(forget, original=original, unlearned=path, retrained=targets,
                                          manifest=hospital, out=audit_dir, accelerator=args.accelerator,
                                          data=request_data,
                                          audit={"reference_models": args.audit_references,
                                                 "reference_dir": root / "audit_references", "plots": False})
            row = make_row(report, seed, setting, name, len(request), path, retrain_s, configs.get(name, {}), root)
            raw.append(row)
            print_row(row)
    return raw


def time_seed(args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """``--timing``: time each method's blind unlearning of the seed's 5% request against one retraining, one after
    the other and nothing else running, into ``<out>/seed<s>/5pct/timing/`` (a finished step is reused: delete the
    folder to time again). The leaderboard's own runs share the machine, so their wall-clock times are rough."""
    root, base = args.out / f"seed{seed}", args.out / f"seed{seed}" / "5pct"
    original, forget = root / "original" / "model.ckpt", base / "forget.txt"
    if not original.exists() or not forget.exists():
        raise SystemExit(f"--timing times the 5pct setting of a finished run: {original} or {forget} is missing")
    hospital = root / "hospital" / "manifest.csv"
    run = run_settings(args, hospital)
    data = unlearn_data(args, {"image_size": args.image_size, "seed": seed, "selection_fraction": 0.0})
    with quiet(args.quiet):
        retrained = _once(api.train, base / "timing" / "retrained", exclude_patients=forget, epochs=args.epochs,
                          seed=seed, data={"image_size": args.image_size, "seed": seed}, **run)
    rows = []
    for method in args.methods:
        tuned = root / "tune" / method / "best.yaml"
        config = tuned if tuned.exists() else config_of(method)
        if method == "RefDistill":
            references_for(args, root, original, hospital, forget, seed, base / "timing" / method)
        with quiet(args.quiet):
            path = _once(api.unlearn, base / "timing" / method, ckpt=original, forget=forget,
                         method=None if config else method, config=config, data=data,
                         method_args=method_settings(args, root, method), seed=seed, **run, extra_args=BLIND_FLAGS)
        unlearn_s, retrain_s = fit_seconds(path), fit_seconds(retrained)
        rows.append({"seed": seed, "method": method, "unlearn_seconds": unlearn_s, "retrain_seconds": retrain_s,
                     "time_ratio": unlearn_s / retrain_s})
        print(f"  timing seed {seed} {method:16s} {unlearn_s:.1f} s / {retrain_s:.1f} s = {unlearn_s / retrain_s:.3f}",
              flush=True)
    return rows


def quiet_time_ratio(base: Path, method: str) -> float:
    """The method's ``--timing`` ratio for this setting, NaN when it was not timed."""
    unlearned, retrained = base / "timing" / method / "model.ckpt", base / "timing" / "retrained" / "model.ckpt"
    return fit_seconds(unlearned) / fit_seconds(retrained) if unlearned.exists() and retrained.exists() else math.nan


def methods_at(args: argparse.Namespace, setting: str) -> list[str]:
    """The methods run at ``setting``: ``--methods``, or ``--small-methods`` at the 1pct and 1patient settings."""
    return args.methods if setting == "5pct" or not args.small_methods else args.small_methods


def print_row(row: dict[str, Any]) -> None:
    print(f"  {row['setting']:<9} {row['method']:<16} avg|gap| {row['avg_gap']:.3f}  verdict {row['verdict']:<12} "
          f"per-patient pass {row['per_patient_pass_share']:.2f}  time/retrain {row['time_ratio']:.3f}", flush=True)


def tuning_seconds(trials_csv: str | Path) -> float:
    """The study's own tuning time: the sum of its trials' durations (a resumed study counts every trial once)."""
    with open(trials_csv) as f:
        return float(sum(float(r.get("user_attrs_seconds") or 0.0) for r in csv.DictReader(f)))


def make_row(report: dict[str, Any], seed: int, setting: str, name: str, forget_patients: int, path: Path,
             retrain_s: float, config: dict[str, Any], root: Path) -> dict[str, Any]:
    """One audited model's row of ``raw.json``."""
    per_patient = (report.get("per_patient") or [{}])[0].get("unlearned", {})
    row = {"seed": seed, "setting": setting, "method": name, "forget_patients": forget_patients,
           "audited_forget_patients": report["data"]["parts"]["forget"]["patients"],
           "verdict": report["verdict"], "per_patient_pass_share": per_patient.get("pass_share", math.nan),
           "targets": len(report["runs"]),
           "time_ratio": 1.0 if name == RETRAIN_ROW else fit_seconds(path) / retrain_s,
           "quiet_time_ratio": 1.0 if name == RETRAIN_ROW else quiet_time_ratio(root / setting, name),
           "tuning_time_ratio": config.get("tuning_seconds", 0.0) / retrain_s,
           "tuned": config.get("tuned", False), "best_params": config.get("best_params")}
    if name == "RefDistill":
        row["reference_time_ratio"] = sum(fit_seconds(p) for p in (root / "method_references").glob(
            "*/model_*.ckpt")) / retrain_s
    # over the audit's runs, one per retrained target (the unlearned model is the same in each); the first run's
    # metrics are the row's own
    pairs = [(model_row(report, "unlearned", i), model_row(report, "retrained", i)) for i in range(row["targets"])]
    row["unlearned"], row["retrained"] = pairs[0]
    row["avg_gap"] = _nanmean([avg_gap(u, t) for u, t in pairs])
    row["retain_acc_gap"] = _nanmean([abs(u["retain_acc"] - t["retain_acc"]) for u, t in pairs])
    return row


def collect_seed(args: argparse.Namespace, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``--collect``: the rows of every model of seed ``seed`` whose audit has finished, running nothing; and the
    steps still missing, ``{"seed", "setting", "method"}`` (``method`` ``None``: the whole setting)."""
    root = args.out / f"seed{seed}"
    configs: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        summary = root / "tune" / method / "tune.json"
        if summary.exists():
            tuned = json.loads(summary.read_text())
            configs[method] = {"tuned": True, "best_params": tuned.get("best_params"),
                               "tuning_seconds": tuning_seconds(tuned["trials_csv"])}
    raw, missing = [], []
    for setting in args.settings:
        base = root / setting
        if not (base / "retrained0" / "model.ckpt").exists() or not (base / "forget.txt").exists():
            missing.append({"seed": seed, "setting": setting, "method": None})
            continue
        retrain_s = retrain_seconds(sorted(base.glob("retrained*/model.ckpt")))
        request = (base / "forget.txt").read_text().split()
        for name in (RETRAIN_ROW, *methods_at(args, setting)):
            audit = base / "audit" / name / "audit.json"
            if not audit.exists():
                missing.append({"seed": seed, "setting": setting, "method": name})
                continue
            path = base / (f"retrained{args.retrains - 1}" if name == RETRAIN_ROW else name) / "model.ckpt"
            raw.append(make_row(json.loads(audit.read_text()), seed, setting, name, len(request), path, retrain_s,
                                configs.get(name, {}), root))
            print_row(raw[-1])
    return raw, missing


def missing_text(step: dict[str, Any]) -> str:
    what = step["method"] or "all (no retrained model yet)"
    return f"seed {step['seed']} {step['setting']} {what}"


def _nanmean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else math.nan


def _span(values: list[float | None]) -> list[float]:
    """``[min, max]`` over seeds of the finite values (NaN, NaN when none): the spread the mean hides."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return [min(values), max(values)] if values else [math.nan, math.nan]


def leaderboard(raw: list[dict[str, Any]], patients: int, image_size: int,
                protocol: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per (method, setting) over seeds; ``noise_floor`` is the Retrain row's average gap (same seeds).
    ``protocol``: the run's settings every row records (tuning trials, the selection shares)."""
    rows = []
    for setting in SETTINGS:
        at = [r for r in raw if r["setting"] == setting]
        floors = {r["seed"]: r["avg_gap"] for r in at if r["method"] == RETRAIN_ROW}
        for method in dict.fromkeys(r["method"] for r in at):
            mine = [r for r in at if r["method"] == method]
            gap, floor = _nanmean([r["avg_gap"] for r in mine]), _nanmean([floors.get(r["seed"]) for r in mine])
            verdicts = [r["verdict"].lower() for r in mine]
            per_seed = [r["avg_gap"] / floors[r["seed"]] for r in mine if floors.get(r["seed"])]
            row = {"method": method, "setting": setting, "avg_gap": gap, "noise_floor": floor,
                   "gap_over_floor": gap / floor if floor and not math.isnan(floor) else math.nan,
                   "avg_gap_range": _span([r["avg_gap"] for r in mine]),
                   "noise_floor_range": _span([floors.get(r["seed"]) for r in mine]),
                   "gap_over_floor_range": _span(per_seed),
                   "retain_acc_gap": _nanmean([r["retain_acc_gap"] for r in mine]),
                   "time_ratio": _nanmean([r["time_ratio"] for r in mine]),
                   "quiet_time_ratio": _nanmean([r.get("quiet_time_ratio", math.nan) for r in mine]),
                   "pass": verdicts.count("pass"), "inconclusive": verdicts.count("inconclusive"),
                   "fail": verdicts.count("fail"),
                   "per_patient_pass_share": _nanmean([r["per_patient_pass_share"] for r in mine]),
                   "patients": patients, "image_size": image_size, "seeds": sorted(r["seed"] for r in mine),
                   "tuning_time_ratio": _nanmean([r["tuning_time_ratio"] for r in mine]),
                   "forget_patients": _nanmean([r["forget_patients"] for r in mine]),
                   "targets": _nanmean([r.get("targets", 1) for r in mine]), **(protocol or {})}
            if any("reference_time_ratio" in r for r in mine):
                row["reference_time_ratio"] = _nanmean([r.get("reference_time_ratio") for r in mine])
            rows.append(row)
    return sorted(rows, key=row_order)


def row_order(row: dict[str, Any]) -> tuple[int, float]:
    """Rows by setting (largest request first), then by average gap (undefined last)."""
    return list(SETTINGS).index(row["setting"]), math.inf if math.isnan(row["avg_gap"]) else row["avg_gap"]


def protocol_of(row: dict[str, Any]) -> tuple[Any, str, int | None, int]:
    """What tells two tuned rows of one method, setting and training length apart: the trial budget, the epoch unit,
    the epoch cap and the retain studies per forget study of an epoch (a row written before these flags existed used
    the retain unit, no cap and the datamodule's default ratio)."""
    return (row.get("trials"), row.get("unlearn_epoch") or "retain", row.get("max_epochs_high"),
            row.get("retain_per_forget") or RETAIN_PER_FORGET)


def merged(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` rows with ``new`` ones added; a new row replaces an old one of the same method, setting, trial
    budget, epoch unit (``unlearn_epoch``), epoch cap (``max_epochs_high``) and retain ratio (``retain_per_forget``)
    trained for as many epochs (``epochs``, of the original and retrained models), and a setting's ``Retrain`` row
    (the same retrained models whatever the budget) is kept once per training length: the new one."""
    def key(row: dict[str, Any]) -> tuple:  # other training epochs: other originals, retrained models and floors
        return (row["method"], row["setting"], row.get("epochs"),
                *(() if row["method"] == RETRAIN_ROW else protocol_of(row)))

    replaced = {key(r) for r in new}
    rows = [r for r in old if key(r) not in replaced] + list(new)
    return sorted(rows, key=row_order)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | method | trials | avg \\|gap\\| [seed range] | floor [seed range] | gap/floor [seed range] | "
             "retain acc gap | time/retrain | pass | inc. | fail | per-patient pass | train epochs |",
             "|---" * 13 + "|"]
    for r in rows:
        lo, hi = r["avg_gap_range"]
        flo, fhi = r["noise_floor_range"]
        glo, ghi = r["gap_over_floor_range"]
        budget, unit, cap, ratio = protocol_of(r)
        trials = "-" if r["method"] == RETRAIN_ROW or r.get("tuning_time_ratio") == 0 else budget or ""
        if trials != "-" and unit != "retain":
            trials = f"{trials}, {unit} epochs"
        if trials != "-" and cap:
            trials = f"{trials}, <= {cap} epochs"
        if trials != "-" and ratio != RETAIN_PER_FORGET:
            trials = f"{trials}, {ratio}x retain"
        lines.append(f"| {r['setting']} | {r['method']} | {trials} | {r['avg_gap']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{r['noise_floor']:.3f} [{flo:.3f}, {fhi:.3f}] | "
                     f"{r['gap_over_floor']:.2f} [{glo:.2f}, {ghi:.2f}] | "
                     f"{r['retain_acc_gap']:.3f} | {r['time_ratio']:.3f} | {r['pass']} | {r['inconclusive']} | "
                     f"{r['fail']} | {r['per_patient_pass_share']:.2f} | {r.get('epochs', '')} |")
    return "\n".join(lines)


def tuned_config(args: argparse.Namespace, method: str) -> str | None:
    """The chosen settings of ``method``: the ``best.yaml`` of the seed whose study reached the lowest validation
    score (validation data only, never the audited requests), as a config with a header saying where it comes from,
    the run-specific paths and trainer flags cleared (``reference_dir``: the method trains or caches its own;
    :data:`RUN_FLAGS`). ``None``: no study."""
    import yaml

    studies = []
    for seed in args.seeds:
        summary = args.out / f"seed{seed}" / "tune" / method / "tune.json"
        if summary.exists():
            tuned = json.loads(summary.read_text())
            studies.append((float(tuned["best_value"]), seed, tuned))
    if not studies:
        return None
    value, seed, tuned = min(studies, key=lambda x: x[:2])
    config = yaml.safe_load(Path(tuned["best_yaml"]).read_text())
    init_args = config.get("model", {}).get("init_args") or {}
    if init_args.get("reference_dir") is not None:
        init_args["reference_dir"] = None
    config.pop("out", None)
    trainer = config.get("trainer") or {}
    for key in RUN_FLAGS:  # how this run was executed, not the method's settings
        trainer.pop(key, None)
    others = ", ".join(f"seed {s} {v:.4f}" for v, s, _ in sorted(studies, key=lambda x: x[1]) if s != seed)
    header = (f"# {method} as tuned by benchmarks/leaderboard.py (issue 14): `medforget tune`, {args.trials} trials "
              f"per seed, objective on {args.tuning_selection:.0%}\n# of a tuning request of 5% of the training "
              f"patients (validation data only), hospital of {args.patients} patients at {args.image_size} px, "
              f"original trained {args.epochs} epochs;\n# max_epochs: the epochs the best trial trained"
              + (f" (the study could choose at most {args.max_epochs_high})" if args.max_epochs_high else "")
              + ".\n"
              f"# Chosen: seed {seed}'s best trial ({tuned['best_trial']}), {tuned['objective']} = {value:.4f}"
              + (f" (other seeds' best: {others})" if others else "") + ".\n"
              "# Other hospitals and sizes: run `python -m medforget tune` on your own data.\n"
              "# python -m medforget unlearn --config configs/unlearn/tuned/<this file> --ckpt ORIGINAL "
              "--forget REQUEST" + ("" if args.request_selection else " --checkpoint.monitor null") + "\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def write_tuned_configs(args: argparse.Namespace, folder: Path) -> list[Path]:
    """``configs/unlearn/tuned/<config name>.yaml`` for every tuned method of the run (:func:`tuned_config`)."""
    written = []
    for method in args.methods:
        text = tuned_config(args, method)
        source = config_of(method)
        if text is None or source is None:
            continue
        atomic_write_text(folder / source.name, text)
        written.append(folder / source.name)
    return written


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=25, help="training epochs of the original and retrained models")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--small-methods", nargs="+", default=None,
                        help="methods run at the 1pct and 1patient settings (default: --methods), e.g. the best at 5%%")
    parser.add_argument("--trials", type=int, default=10, help="tuning trials per method and seed (fixed budget)")
    parser.add_argument("--tuning-selection", type=float, default=0.9,
                        help="share of the tuning request set aside for the tuning objective (never audited)")
    parser.add_argument("--request-selection", type=float, default=0.0,
                        help="share of each audited request set aside for checkpoint selection; 0 (default): none, "
                             "the tuned epochs and the last weights, every forget patient audited")
    parser.add_argument("--unlearn-epoch", choices=["retain", "forget"], default=None,
                        help="what one unlearning epoch is (--data.unlearn_epoch of tuning and unlearning; default the "
                             "datamodule's, a pass over the bounded retain sample): 'forget' makes each epoch a pass "
                             "over the forget request, a few steps, so the tuned number of epochs sets the cost finely")
    parser.add_argument("--max-epochs-high", type=int, default=None,
                        help="largest number of unlearning epochs a tuning trial may sample (tune --max_epochs_high; "
                             "default twice the method config's)")
    parser.add_argument("--retain-per-forget", type=int, default=None,
                        help="retain studies per forget study in an unlearning epoch (--data.retain_per_forget of "
                             f"tuning and unlearning; default the datamodule's, {RETAIN_PER_FORGET}): fewer make every "
                             "epoch, and the retain pool decoded for it, cheaper")
    parser.add_argument("--retrains", type=int, default=3,
                        help="retrained models per seed and setting (>= 2): every model is audited against all but "
                             "the last (the audit's noise floor, with 2 or more), the last is the Retrain row")
    parser.add_argument("--audit-references", type=int, default=4, help="the audit's K reference models")
    parser.add_argument("--method-references", type=int, default=4, help="RefDistill's own K reference models")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="120 patients, 8 epochs, FineTune + RefDistill, seed 0, 5%% only, 2 trials, K=2")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: tabulate the audits already finished under --out and list what is missing")
    parser.add_argument("--write-configs", type=Path, nargs="?", const=ROOT / "configs" / "unlearn" / "tuned",
                        default=None, help="with --collect: write each tuned method's chosen settings as a config "
                        "(default folder configs/unlearn/tuned)")
    parser.add_argument("--timing", action="store_true",
                        help="time each --methods' blind unlearning of the 5pct request against one retraining, one at "
                             "a time (run it alone on the machine); a later --collect reports it as quiet_time_ratio")
    parser.add_argument("--append", action="store_true",
                        help="merge the rows into the existing --results file (a row of the same method, setting "
                             "and trial budget is replaced; the Retrain row of a setting is kept once): one file for "
                             "runs of several budgets or folders")
    parser.add_argument("--verbose", dest="quiet", action="store_false", help="show Lightning's output")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default benchmarks/runs/leaderboard)")
    parser.add_argument("--results", type=Path, default=None,
                        help="leaderboard JSON (default benchmarks/results/leaderboard.json; --quick: <out>/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.epochs, args.seeds, args.settings = 120, 8, [0], ["5pct"]
        args.methods = args.methods or ["FineTune", "RefDistill"]
        args.trials, args.audit_references, args.method_references = 2, 2, 2
    args.methods = args.methods or list_methods()
    for method in args.methods + (args.small_methods or []):
        get_method(method)
    if args.small_methods and not set(args.small_methods) <= set(args.methods):
        parser.error("--small-methods must be a subset of --methods (they are tuned once per seed)")
    if args.retrains < 2:
        parser.error("--retrains must be >= 2 (the noise floor is the gap between two retrained models)")
    args.out = args.out or ROOT / "benchmarks" / "runs" / ("leaderboard_quick" if args.quick else "leaderboard")
    results = args.results or (args.out / "leaderboard.json" if args.quick
                               else ROOT / "benchmarks" / "results" / "leaderboard.json")
    api.quiet_lightning()
    os.environ.setdefault("MEDFORGET_CACHE", str(args.out / "cache"))
    start = time.perf_counter()
    if args.timing:
        timed = [row for seed in args.seeds for row in time_seed(args, seed)]
        atomic_write_text(args.out / "timing.json", json.dumps(timed, indent=1) + "\n")
        print(f"wrote {args.out / 'timing.json'}; --collect adds quiet_time_ratio to the rows", flush=True)
        return timed
    raw: list[dict[str, Any]] = []
    missing: list[dict[str, Any]] = []
    for seed in args.seeds:
        if args.collect:
            rows_of_seed, missing_of_seed = collect_seed(args, seed)
            raw, missing = raw + rows_of_seed, missing + missing_of_seed
        else:
            raw += run_seed(args, seed)
        atomic_write_text(args.out / "raw.json", json.dumps(raw, indent=1, default=str))
    rows = leaderboard(raw, args.patients, args.image_size, protocol={
        "trials": args.trials, "tuning_selection": args.tuning_selection,
        "request_selection": args.request_selection, "unlearn_epoch": args.unlearn_epoch or "retain",
        "max_epochs_high": args.max_epochs_high,
        "retain_per_forget": args.retain_per_forget or RETAIN_PER_FORGET, "epochs": args.epochs})
    for row in rows:
        row["missing"] = [m for m in missing if m["setting"] == row["setting"] and m["method"] in (row["method"], None)]
    seconds = time.perf_counter() - start
    command = "python benchmarks/leaderboard.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Command: `{command.strip()}`  \nWall time {seconds:.0f} s; {args.patients} patients, "
              f"{args.image_size}x{args.image_size} px, {args.epochs} training epochs, seeds {args.seeds}, "
              f"{args.retrains} retrains per seed (audited against {args.retrains - 1}), {args.trials} tuning trials "
              f"per method on {args.tuning_selection:.0%} of the tuning request, checkpoint selection on "
              + (f"{args.request_selection:.0%} of each request" if args.request_selection else
                 "no part of the audited requests (blind: tuned epochs, last weights)") + ", audit K="
              f"{args.audit_references}, accelerator {args.accelerator}"
              + (f", unlearning epochs over the {args.unlearn_epoch} part" if args.unlearn_epoch else "")
              + (f", at most {args.max_epochs_high} tuned epochs" if args.max_epochs_high else "")
              + (f", {args.retain_per_forget} retain studies per forget study in an unlearning epoch"
                 if args.retain_per_forget else "") + "."
              + (f"  \nNot finished (left out of the rows): {'; '.join(map(missing_text, missing))}."
                 if missing else ""))
    if args.write_configs is not None:
        for path in write_tuned_configs(args, args.write_configs):
            print(f"wrote {path}", flush=True)
    if args.append and results.exists():
        rows = merged(json.loads(results.read_text()), rows)
    atomic_write_text(results, json.dumps(rows, indent=1, default=str) + "\n")
    atomic_write_text(args.out / "table.md", header + "\n\n" + table(rows) + "\n")
    print("\n" + header + "\n\n" + table(rows) + f"\n\nwrote {results}", flush=True)
    return rows


if __name__ == "__main__":
    main()
