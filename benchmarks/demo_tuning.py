"""Tune the demo's unlearning method at the demo's size, on validation data only (issue 14): the settings in
:data:`medforget.demo.DEMO_SETTINGS`.

Takes a finished demo run folder (``python -m medforget demo --seed 1 --out runs/demo_seed1``: its hospital, split,
original model and forget request), draws a *tuning request* of the same size from the training patients that are
NOT in the demo's request (label-stratified, seeded), and runs ``medforget tune`` on it. The tune objective sees
the tuning request's selection part, the retain sample and val patients only: never test patients, the retrained
model, or the demo request the audit scores.

    python -m medforget demo --seed 1 --out runs/demo_seed1
    python benchmarks/demo_tuning.py --demo runs/demo_seed1          # RefDistill, 8 trials, K = 2 references

Writes ``<demo>/tune_<method>/`` (the resumable study, best.yaml) and ``benchmarks/results/demo_tuning.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medforget import api  # noqa: E402
from medforget.core.checkpoint import read_checkpoint  # noqa: E402
from medforget.core.io import write_json  # noqa: E402
from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.splits import patient_strata, sample_forget_request, write_patient_ids  # noqa: E402

CONFIGS = {"RefDistill": "ref_distill.yaml", "FineTune": "finetune.yaml"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `medforget demo` run folder")
    parser.add_argument("--method", default="RefDistill", choices=sorted(CONFIGS))
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-epochs-high", type=int, default=6)
    parser.add_argument("--request-seed", type=int, default=100)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "demo_tuning.json")
    args = parser.parse_args(argv)
    demo = args.demo
    if not (demo / "demo.json").exists() or not (demo / "original" / "model.ckpt").exists():
        parser.error(f"--demo {demo}: not a finished demo run (no demo.json / original/model.ckpt)")
    data = read_checkpoint(demo / "original" / "model.ckpt")["medforget"]["provenance"]["data"]
    image_size, seed = int(data["image_size"]), int(data["seed"])
    manifest = demo / "hospital" / "manifest.csv"
    demo_request = set((demo / "forget.txt").read_text().split())
    dm = DicomReportDataModule(str(manifest), image_size=image_size, seed=seed, cache_rate=0.0)
    dm.setup()
    train = dm.df.loc[dm.indices["train"], "patient_id"]
    others = train[~train.astype(str).isin(demo_request)]
    request = sample_forget_request(others, len(demo_request) / train.nunique(), args.request_seed,
                                    strata=patient_strata(dm.df))
    if set(map(str, request)) & demo_request:
        raise RuntimeError("the tuning request overlaps the demo's request")
    tuning = write_patient_ids(request, demo / "tuning_request.txt")
    fixed = ({"num_references": 2, "reference_dir": str(demo / "tune_references")} if args.method == "RefDistill"
             else None)
    summary = api.tune(demo / "original" / "model.ckpt", tuning, args.method, demo / f"tune_{args.method}",
                       n_trials=args.trials, sampler_seed=0, max_epochs_high=args.max_epochs_high, manifest=manifest,
                       method_args=fixed, data={"image_size": image_size, "seed": seed}, accelerator="cpu",
                       seed=seed, config=ROOT / "configs" / "unlearn" / CONFIGS[args.method])
    with open(summary["trials_csv"]) as f:
        trials = list(csv.DictReader(f))
    result = {"command": "python benchmarks/demo_tuning.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "purpose": "the demo's unlearning settings (medforget.demo.DEMO_SETTINGS)", "method": args.method,
              "demo_seed": seed, "tuning_request_patients": len(request), "demo_request_patients": len(demo_request),
              "max_epochs_high": args.max_epochs_high, "method_args": fixed,
              **{k: summary.get(k) for k in ("objective", "best_value", "best_params", "best_trial", "complete",
                                             "pruned")},
              "trials": [{k: v for k, v in r.items() if k != "user_attrs_run_dir"} for r in trials]}
    write_json(result, args.results)
    print(f"best {summary['best_params']} (validation score {summary['best_value']:.4f}) -> {args.results}")
    return result


if __name__ == "__main__":
    main()
