"""Multimodal unlearning benchmark on the synthetic hospital (issue 3).

For every seed: a synthetic hospital, one original model; for every forget size (fraction of training patients,
drawn per predominant label): a model retrained without the forget patients, then every method unlearns the original.
Each method's learning rate is chosen from its grid by the validation selection score of
:mod:`medforget.methods.classifier.selection` (forget / retain-sample / val patients against the original model;
never the
test patients, never the retrained model); the epoch is chosen the same way by the unlearn CLI. The table reports
forget AUC/F1, test AUC/F1 and the loss-attack MIA AUC (forget vs test patients) of each model, each as mean ± std over
seeds with the mean absolute gap to the retrained model, the average gap over {forget AUC, forget F1, test AUC,
MIA AUC}, and the unlearning wall time (``Trainer.fit``) as a fraction of the retraining wall time.

    python benchmarks/multimodal.py                      # 3 sizes x 3 seeds, ~40 min on a 2-core laptop
    python benchmarks/multimodal.py --quick              # one small setting, ~2 min (a smoke run)
    python benchmarks/multimodal.py --accelerator gpu    # same on a GPU

Results go to ``--out`` (default ``benchmarks/runs/multimodal``): ``results.json`` (every run) and ``table.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medforget import api  # noqa: E402
from medforget.audit.classifier.measure import evaluate_models  # noqa: E402
from medforget.core.checkpoint import read_checkpoint  # noqa: E402
from medforget.core.io import write_json  # noqa: E402
from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.splits import patient_strata, sample_forget_request, write_patient_ids  # noqa: E402
from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital  # noqa: E402

# name -> (unlearn config, the method's own arguments besides lr, learning-rate grid). Epochs are the config's
# (trainer.max_epochs).
METHODS: dict[str, tuple[str, dict[str, Any], list[float]]] = {
    "FineTune": ("finetune.yaml", {}, [1e-3, 5e-3]),
    "GradientAscent": ("gradient_ascent.yaml", {}, [1e-5, 5e-5]),
    "ForgetMI-equal": ("forget_mi.yaml", {"preset": "equal"}, [1e-3, 3e-3]),
    "ForgetMI-unimodal": ("forget_mi.yaml", {"preset": "unimodal"}, [1e-3, 3e-3]),
    "ForgetMI-multimodal": ("forget_mi.yaml", {"preset": "multimodal"}, [1e-3, 3e-3]),
    "ForgetMI-retention": ("forget_mi.yaml", {"preset": "retention"}, [1e-3, 3e-3]),
    "MultiDelete": ("multidelete.yaml", {}, [5e-4, 2e-3]),
}
RESEEDED = "retrained-reseeded"
TARGET = ("forget_auc", "forget_f1", "test_auc", "mia_auc")
COLUMNS = ("forget_auc", "forget_f1", "test_auc", "test_f1", "mia_auc")


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence the per-run Lightning chatter (progress bars, tips) so the benchmark prints its own lines."""
    if not enabled:
        yield
        return
    level = logging.getLogger("lightning").level
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.getLogger("lightning").setLevel(level)
        logging.getLogger("lightning.pytorch").setLevel(level)


def fit_seconds(path: Path) -> float:
    provenance = read_checkpoint(path)["medforget"]["provenance"]
    return float(provenance.get("fit_seconds", provenance.get("unlearn_seconds", math.nan)))


def model_row(report: dict[str, Any], name: str) -> dict[str, float]:
    result = report["models"][name]
    metrics = result["metrics"]
    return {
        "forget_auc": metrics["forget"]["fused"]["auc"],
        "forget_f1": metrics["forget"]["fused"]["f1"],
        "test_auc": metrics["test"]["fused"]["auc"],
        "test_f1": metrics["test"]["fused"]["f1"],
        "mia_auc": result["mia"]["LossAttack"]["auc"],
    }


def run_setting(args, seed: int, fraction: float, hospital: Path, original: Path, root: Path,
                methods: dict[str, tuple[str, dict[str, Any], list[float | None]]] | None = None) -> list[dict]:
    """Retrain and every method for one (seed, forget fraction); returns one row per model. ``methods`` maps a
    row name to ``(config file in configs/unlearn, the method's own arguments, lr grid)`` (default :data:`METHODS`);
    an lr of ``None`` keeps the config's (training-free methods have none)."""
    methods = METHODS if methods is None else methods
    data = {"image_size": args.image_size, "seed": seed}
    dm = DicomReportDataModule(str(hospital), image_size=args.image_size, seed=seed, cache_rate=0.0)
    dm.setup()
    train_patients = dm.df.loc[dm.indices["train"], "patient_id"]
    request = sample_forget_request(train_patients, fraction, seed, strata=patient_strata(dm.df))
    forget = write_patient_ids(request, root / "forget.txt")
    fixed = {"data": data, "accelerator": args.accelerator, "overwrite": True,
             "trainer": {"enable_progress_bar": not args.quiet}}
    with quiet(args.quiet):
        retrained = api.train(hospital, root / "retrained", exclude_patients=forget, epochs=args.epochs, seed=seed,
                              **fixed)
    retrain_s = fit_seconds(retrained)
    print(f"  retrain: {retrain_s:.1f} s ({len(request)} forget patients)", flush=True)

    checkpoints = {"original": str(original), "retrained": str(retrained)}
    if args.noise_floor:  # a second retrain that differs only in its seed: the gap no method can beat
        with quiet(args.quiet):
            checkpoints[RESEEDED] = str(api.train(hospital, root / RESEEDED, exclude_patients=forget,
                                                  epochs=args.epochs, seed=seed + 1000, **fixed))
    chosen: dict[str, dict] = {}
    for name in args.methods:
        config, own, grid = methods[name]
        candidates = []
        for lr in grid if not args.no_tune else grid[:1]:
            out = root / name / (f"lr{lr:g}" if lr is not None else "default")
            with quiet(args.quiet):
                path = api.unlearn(original, forget, out=out, config=ROOT / "configs" / "unlearn" / config,
                                   manifest=hospital, method_args={**own, **({"lr": lr} if lr is not None else {})},
                                   seed=seed, **fixed)
            selection = read_checkpoint(path)["medforget"]["provenance"]["selection"]
            candidates.append((selection.get("score", math.inf), lr, path, selection))
            score = selection.get("score", math.nan)
            print(f"  {name:<20} lr {lr if lr is not None else '-':<8} validation score {score:.4f} "
                  f"(epoch {selection.get('epoch')}) {fit_seconds(path):.1f} s", flush=True)
        score, lr, path, selection = min(candidates, key=lambda c: c[0])
        checkpoints[name] = str(path)
        chosen[name] = {"lr": lr, "epoch": selection.get("epoch"), "validation_score": score,
                        "tuning_seconds": sum(fit_seconds(c[2]) for c in candidates)}

    with quiet(args.quiet):
        dm = DicomReportDataModule(str(hospital), mode="evaluate", forget=str(forget), image_size=args.image_size,
                                   seed=seed)
        report = evaluate_models(checkpoints, dm, accelerator=args.accelerator)
    write_json(report, root / "metrics.json")
    rows = []
    for name in checkpoints:
        row = {"seed": seed, "fraction": fraction, "forget_patients": len(request), "method": name,
               **model_row(report, name)}
        if name in chosen:
            row.update(chosen[name])
        if name != "original":
            row["time_fraction"] = fit_seconds(Path(checkpoints[name])) / retrain_s
        rows.append(row)
    return rows


def summarise(rows: list[dict], methods: list[str], sort_by_gap: bool = False) -> str:
    """Markdown tables, one per forget size: mean ± std over seeds, |gap| to retrain and the target average gap
    (methods sorted by that gap with ``sort_by_gap``: a leaderboard)."""
    lines = []
    for fraction in sorted({r["fraction"] for r in rows}):
        at = [r for r in rows if r["fraction"] == fraction]
        seeds = sorted({r["seed"] for r in at})
        n_forget = statistics.mean(r["forget_patients"] for r in at)
        reference = {s: next(r for r in at if r["seed"] == s and r["method"] == "retrained") for s in seeds}
        lines += [f"\n### Forget {fraction:.0%} of training patients (~{n_forget:.0f} patients), "
                  f"{len(seeds)} seed(s)\n",
                  "| model | " + " | ".join(f"{c} (\\|gap\\|)" for c in COLUMNS)
                  + " | avg \\|gap\\| (target 4) | time / retrain | lr |",
                  "|---" * (len(COLUMNS) + 4) + "|"]
        ordered = sorted(methods, key=lambda m: _avg_gap(at, reference, m)) if sort_by_gap else methods
        for name in ["original", "retrained", RESEEDED, *ordered]:
            mine = [r for r in at if r["method"] == name]
            if not mine:
                continue
            cells = []
            for c in COLUMNS:
                values = [r[c] for r in mine]
                gaps = [abs(r[c] - reference[r["seed"]][c]) for r in mine]
                cells.append(f"{_mean_std(values)} ({statistics.mean(gaps):.3f})")
            gap = _avg_gap(at, reference, name)
            time_fraction = [r["time_fraction"] for r in mine if "time_fraction" in r]
            lrs = sorted({r["lr"] for r in mine if r.get("lr") is not None})
            lines.append(f"| {name} | " + " | ".join(cells)
                         + f" | **{gap:.3f}** | {_mean_std(time_fraction) if time_fraction else '-'} | "
                         + (", ".join(f"{x:g}" for x in lrs) if lrs else "-") + " |")
    return "\n".join(lines)


def _avg_gap(rows: list[dict], reference: dict[int, dict], name: str) -> float:
    """Mean over seeds of the average |gap| to that seed's retrained model over the :data:`TARGET` metrics."""
    mine = [r for r in rows if r["method"] == name]
    if not mine:
        return math.inf
    return statistics.mean(statistics.mean(abs(r[c] - reference[r["seed"]][c]) for c in TARGET) for r in mine)


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "nan"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f}±{statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None,
         methods: dict[str, tuple[str, dict[str, Any], list[float | None]]] | None = None,
         fractions: tuple[float, ...] = (0.03, 0.06, 0.10), sort_by_gap: bool = False, doc: str | None = None,
         out: Path | None = None, script: str = "benchmarks/multimodal.py") -> list[dict]:
    """Run the benchmark; ``methods``/``fractions``/``sort_by_gap`` let other scripts (the leaderboard) reuse it."""
    methods = METHODS if methods is None else methods
    doc = doc or __doc__
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--fractions", type=float, nargs="+", default=list(fractions))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(methods), choices=list(methods))
    parser.add_argument("--num-patients", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=25, help="training epochs of the original and retrained models")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--no-noise-floor", dest="noise_floor", action="store_false",
                        help="skip the second retrain (another seed) that measures the noise floor of the gaps")
    parser.add_argument("--resume", action="store_true", help="skip the (seed, size) settings in results.json")
    parser.add_argument("--no-tune", action="store_true", help="use the first learning rate of each grid only")
    parser.add_argument("--quick", action="store_true", help="one seed, 6%%, 120 patients, 8 epochs: a smoke run")
    parser.add_argument("--verbose", dest="quiet", action="store_false", help="show Lightning's output")
    parser.add_argument("--out", type=Path, default=out or ROOT / "benchmarks" / "runs" / "multimodal")
    args = parser.parse_args(argv)
    if args.quick:
        args.fractions, args.seeds, args.num_patients, args.epochs = [0.06], [0], 120, 8
    api.quiet_lightning()
    os.environ.setdefault("MEDFORGET_CACHE", str(args.out / "cache"))
    np.set_printoptions(precision=3)

    rows: list[dict] = []
    results = args.out / "results.json"
    if args.resume and results.exists():
        rows = [r for r in json.loads(results.read_text())
                if r["seed"] in args.seeds and r["fraction"] in args.fractions]
        print(f"resuming: {len({(r['seed'], r['fraction']) for r in rows})} setting(s) already in {results}")
    done = {(r["seed"], r["fraction"]) for r in rows}
    start = time.perf_counter()
    for seed in args.seeds:
        if all((seed, f) in done for f in args.fractions):
            continue
        root = args.out / f"seed{seed}"
        hospital = generate_hospital(root / "hospital", SyntheticConfig(
            num_patients=args.num_patients, image_size=args.image_size, seed=seed), overwrite=True)
        print(f"seed {seed}: training the original model", flush=True)
        with quiet(args.quiet):
            original = api.train(hospital, root / "original", epochs=args.epochs, seed=seed,
                                 data={"image_size": args.image_size, "seed": seed}, accelerator=args.accelerator,
                                 overwrite=True, trainer={"enable_progress_bar": not args.quiet})
        for fraction in args.fractions:
            if (seed, fraction) in done:
                continue
            print(f"seed {seed}, forget {fraction:.0%}", flush=True)
            rows += run_setting(args, seed, fraction, hospital, original, root / f"forget{round(fraction * 100)}",
                                {k: methods[k] for k in args.methods})
            results.write_text(json.dumps(rows, indent=1))
    table = summarise(rows, args.methods, sort_by_gap)
    command = f"python {script} " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Command: `{command.strip()}`  \nWall time: {time.perf_counter() - start:.0f} s; "
              f"{args.num_patients} patients, {args.image_size}x{args.image_size}, {args.epochs} training epochs, "
              f"accelerator {args.accelerator}.")
    (args.out / "table.md").write_text(header + "\n" + table + "\n")
    print("\n" + header + table)
    return rows


if __name__ == "__main__":
    main()
