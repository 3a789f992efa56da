"""The demo: synth -> train original -> retrain without a forget request -> unlearn -> evaluate, with timings, on
the Python API (:mod:`medforget.api`); :func:`command` is the ``medforget demo`` verb."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from medforget import api
from medforget.commands.base import VERBS
from medforget.core.io import write_json
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.datamodules.splits import patient_strata, sample_forget_request, write_patient_ids

# The demo's unlearning settings per method, each what ``medforget tune`` chose on validation data only (the
# selection part of a tuning request of other training patients than the demo's, the retain sample and val
# patients; never test patients, the retrained model or the patients the audit scores), with the trainer and data
# flags of the method's config that the tuning ran with (RefDistill: an epoch is one pass over the forget patients).
# RefDistill: 8 trials on seed 1's demo hospital and original, K = 2 references of its own
# (``benchmarks/demo_tuning.py``, ``benchmarks/results/demo_tuning.json``). FineTune: 8 trials on seed 0's.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "RefDistill": {"epochs": 6, "trainer": {"gradient_clip_val": 1.0}, "data": {"unlearn_epoch": "forget"},
                   "method_args": {"lr": 6.5e-4, "num_references": 2, "temperature": 2.0, "forget_weight": 1.8,
                                   "retain_kl_weight": 1.3, "retain_ce_weight": 0.54}},
    "FineTune": {"epochs": 4, "trainer": {}, "method_args": {"lr": 6.4e-4}},
}


def run_demo(
    out: str = "runs/demo",
    num_patients: int = 300,
    image_size: int = 64,
    forget_fraction: float = 0.05,
    epochs: int = 12,
    method: str = "RefDistill",
    unlearn_epochs: int | None = None,
    unlearn_lr: float | None = None,
    method_args: dict[str, Any] | None = None,
    seed: int = 0,
    accelerator: str = "auto",
) -> dict[str, Any]:
    """Run the whole medforget flow on a fresh synthetic hospital and print the evaluation table and stage times.

    Args:
        out: Working directory (hospital, runs, forget request, audit.json / audit.md / audit.html). Replaced if it
            exists.
        num_patients: Patients in the synthetic hospital.
        image_size: Image side in pixels.
        forget_fraction: Fraction of training patients in the forget request.
        epochs: Training epochs of the original and the retrained model (same recipe; the one-cycle schedule
            converges in 12: test AUC 0.89, every training patient memorised).
        method: Registered unlearning method. RefDistill (default) had the best gap to retraining over the noise
            floor in ``benchmarks/leaderboard.py``; it trains K = 2 reference models of its own (on half the
            retain patients each, never the forget patients) before it unlearns, inside the unlearn stage's time.
        unlearn_epochs: Unlearning epochs (the best epoch on validation data is exported; default: the method's
            tuned value in ``DEMO_SETTINGS``, else 4).
        unlearn_lr: Unlearning learning rate (default: the method's tuned value, else the method's own default).
        method_args: The method's ``__init__`` arguments (default: the tuned ones in ``DEMO_SETTINGS``).
        seed: Seed of the data, the split, the forget request and training.
        accelerator: Lightning accelerator (``auto`` uses a GPU when there is one).
    """
    root = Path(out)
    times: dict[str, float] = {}

    def stage(name: str):
        print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
        return time.perf_counter()

    t = stage("synth: synthetic hospital")
    manifest = api.synth(root / "hospital", overwrite=True, num_patients=num_patients, image_size=image_size, seed=seed)
    times["synth"] = time.perf_counter() - t

    data = {"image_size": image_size, "seed": seed}
    dm = DicomReportDataModule(str(manifest), image_size=image_size, seed=seed, cache_rate=0.0)
    dm.setup()
    train_patients = dm.df.loc[dm.indices["train"], "patient_id"]
    strata = patient_strata(dm.df)  # a representative request: patients drawn per predominant label
    request = sample_forget_request(train_patients, forget_fraction, seed, strata=strata)
    forget = write_patient_ids(request, root / "forget.txt")
    n_forget = len(forget.read_text().split())
    print(f"forget request: {n_forget} of {train_patients.nunique()} training patients -> {forget}")

    common = {"data": data, "epochs": epochs, "accelerator": accelerator, "seed": seed, "overwrite": True}
    t = stage("train: original model")
    original = api.train(manifest, root / "original", **common)
    times["train original"] = time.perf_counter() - t

    t = stage("retrain: reference without the forget patients")
    retrained = api.train(manifest, root / "retrained", exclude_patients=forget, **common)
    times["retrain"] = time.perf_counter() - t

    t = stage(f"unlearn: {method}")
    settings = DEMO_SETTINGS.get(method, {})
    arguments = dict(settings.get("method_args", {}) if method_args is None else method_args)
    if unlearn_lr is not None:
        arguments["lr"] = unlearn_lr
    unlearned = api.unlearn(original, forget, method, root / "unlearned", manifest=manifest,
                            data={**data, **settings.get("data", {})},
                            method_args=arguments, trainer=settings.get("trainer"),
                            epochs=unlearn_epochs or settings.get("epochs", 4), accelerator=accelerator, seed=seed,
                            overwrite=True)
    times[f"unlearn ({method})"] = time.perf_counter() - t

    t = stage("evaluate: the audit of original / unlearned / retrained")
    report = api.evaluate(forget, original=original, unlearned=unlearned, retrained=retrained, manifest=manifest,
                          data=data, out=root, accelerator=accelerator)
    times["evaluate"] = time.perf_counter() - t

    print("\nstage wall times")
    for name, seconds in times.items():
        print(f"  {name:<28} {seconds:7.1f} s")
    print(f"  {'total':<28} {sum(times.values()):7.1f} s")
    print(f"\naudit: {root / 'audit.html'} (also audit.md, audit.json); verdict {report['verdict'].upper()}")
    report["stage_seconds"] = times
    write_json({"stage_seconds": times, "verdict": report["verdict"]}, root / "demo.json")
    return report


def command(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget demo``: the whole flow on the synthetic hospital (the flags are :func:`run_demo`'s arguments)."""
    parser = ArgumentParser(prog="medforget demo", description=VERBS["demo"], default_env=False)
    parser.add_function_arguments(run_demo)
    cfg = parser.parse_args(args)
    return run_demo(**cfg.as_dict())
