"""Unlearning cost versus hospital size (issue 15): retrain grows with the hospital, bounded unlearning does not.

Hospitals of 300, 1,000 and 3,000 synthetic patients (same image size), a fixed request of 10 training patients. Per
hospital, in one run on one machine: the retrained model's ``fit`` time (the original's recipe without the request),
each method's whole ``unlearn`` call (setup, decoding, epochs, export) with the default bounded data
(``--data.bounded true``), and the audit's whole ``evaluate`` call (bounded samples). At the middle size the first
method also runs with ``--data.bounded false`` (every retain study each epoch), and the forget / test metrics of the
two unlearned models are compared with a paired patient bootstrap on every study of those parts.

    python benchmarks/scaling.py                      # 300 / 1,000 / 3,000 patients, 32 px (~1 h on a 2-core CPU)
    python benchmarks/scaling.py --quick              # 60 / 120 / 240 patients, 16 px (a smoke run)

Writes ``benchmarks/results/scaling.json`` (``patients``, ``retrain_s``, ``unlearn_s`` {method: list}, ``audit_s``,
``bounded_vs_unbounded``) and ``scaling.png`` (log-log) next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from medforget import api  # noqa: E402
from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.splits import sample_forget_request, write_patient_ids  # noqa: E402
from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital  # noqa: E402

# the two best methods of the leaderboard (benchmarks/RESULTS.md, issue 5) and the settings it chose for them
METHODS = {"L1Sparse": {"lr": 0.005}, "SCRUB": {"lr": 0.0005}}


def _provenance(path: Path) -> dict:
    from medforget.core.checkpoint import read_checkpoint

    return read_checkpoint(path)["medforget"]["provenance"]


def compare_bounded(bounded: Path, unbounded: Path, retrained: tuple[Path, Path], data: dict, forget: Path, reps: int,
                    seed: int) -> dict:
    """Forget and test AUC / F1 / accuracy of two unlearned models on every study of those parts, their paired
    patient-bootstrap difference (bounded - unbounded) with its 95% interval, and the noise floor: the difference
    between two retrained models of different seeds on the same studies. ``within_noise``: the difference is no
    larger than the noise floor, or its interval contains 0."""
    from medforget.audit.bootstrap import classification_replicates, patient_weights
    from medforget.audit.classifier.measure import predict
    from medforget.audit.utility import classification_metrics
    from medforget.datamodules import keys
    from medforget.systems.classifier import load_classifier

    dm = DicomReportDataModule(**data, mode="evaluate", forget=str(forget), bounded=False, selection_fraction=0.0)
    dm.setup()
    loaders = dm.evaluation_dataloaders()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False)
    rng = np.random.default_rng(seed)
    out: dict = {}
    for part in ("forget", "test"):
        outs = {name: predict(load_classifier(path), loaders[part], trainer)
                for name, path in (("bounded", bounded), ("unbounded", unbounded), ("retrained", retrained[0]),
                                   ("retrained_seed2", retrained[1]))}
        labels = outs["bounded"][keys.LABEL].numpy()
        groups = dm.df.loc[outs["bounded"][keys.INDEX].numpy(), "patient_id"].astype(str).to_numpy()
        weights = patient_weights(groups, reps, rng)
        reps_of = {name: classification_replicates(o["logits"]["fused"].double().numpy(), labels, weights)
                   for name, o in outs.items()}
        for metric in ("auc", "f1", "accuracy"):
            values = {name: float(classification_metrics(o["logits"]["fused"], o[keys.LABEL])[metric])
                      for name, o in outs.items()}
            diff = reps_of["bounded"][metric] - reps_of["unbounded"][metric]
            lo, hi = np.nanpercentile(diff, [2.5, 97.5])
            difference = values["bounded"] - values["unbounded"]
            floor = abs(values["retrained"] - values["retrained_seed2"])
            out[f"{part}_{metric}"] = {**values, "difference": difference, "ci95": [float(lo), float(hi)],
                                       "noise_floor": floor,
                                       "within_noise": bool(lo <= 0 <= hi or abs(difference) <= floor)}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    n = results["patients"]
    ax.loglog(n, results["retrain_s"], "o-", label="retrain (fit)", color="k")
    for method, seconds in results["unlearn_s"].items():
        ax.loglog(n, seconds, "s-", label=f"unlearn {method} (bounded)")
    ax.loglog(n, results["audit_s"], "^--", label="audit (bounded)", color="grey")
    ax.set_xlabel("patients in the hospital")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"request of {results['forget_patients']} patients, {results['image_size']} px")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of the original and the retrain")
    parser.add_argument("--unlearn-epochs", type=int, default=3)
    parser.add_argument("--forget-patients", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--compare-at", type=int, default=1000, help="hospital size of the bounded/unbounded check")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="unlearning runs per method and size (the fastest "
                        "is reported, all are kept): a shared machine's noise")
    parser.add_argument("--reuse", action="store_true", help="reuse the hospitals and trained models of an earlier "
                        "run in --out (retrain_s is then the earlier run's fit time)")
    parser.add_argument("--quick", action="store_true", help="tiny hospitals (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "scaling")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.image_size, args.epochs, args.unlearn_epochs = [60, 120, 240], 16, 2, 1
        args.forget_patients, args.compare_at, args.bootstrap = 4, 120, 200
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {message}", flush=True)

    results: dict = {"patients": [], "retrain_s": [], "unlearn_s": {m: [] for m in args.methods}, "audit_s": [],
                     "image_size": args.image_size, "forget_patients": args.forget_patients, "epochs": args.epochs,
                     "unlearn_epochs": args.unlearn_epochs, "studies": [], "unlearn_read_studies": {}}
    for n in args.patients:
        root = args.out / f"h{n}"
        reuse = args.reuse and (root / "retrained" / "model.ckpt").is_file() and (root / "original" / "model.ckpt"
                                                                                  ).is_file()
        if reuse:  # the hospital and models of an earlier run with the same settings: re-time unlearning and audit
            manifest = root / "hospital" / "manifest.csv"
        else:
            manifest = generate_hospital(root / "hospital", SyntheticConfig(
                num_patients=n, image_size=args.image_size, seed=args.seed), overwrite=True)
        data = {"manifest": str(manifest), "image_size": args.image_size, "seed": args.seed}
        dm = DicomReportDataModule(**data, cache_rate=0.0)
        dm.setup()
        train_patients = dm.df.loc[dm.indices["train"], "patient_id"]
        request = sample_forget_request(train_patients, args.forget_patients / train_patients.nunique(), args.seed)
        forget = write_patient_ids(request, root / "forget.txt")
        common = {"manifest": manifest, "accelerator": "cpu", "overwrite": True,
                  "data": {"image_size": args.image_size, "seed": args.seed, "selection_fraction": 0.0},
                  "trainer": {"enable_progress_bar": False}}
        log(f"{n} patients ({len(dm.df)} studies): training the original")
        if reuse:
            original, retrained = root / "original" / "model.ckpt", root / "retrained" / "model.ckpt"
        else:
            original = api.train(out=root / "original", epochs=args.epochs, seed=args.seed, **common)
            retrained = api.train(out=root / "retrained", exclude_patients=forget, epochs=args.epochs,
                                  seed=args.seed, **common)
        retrain_s = float(_provenance(retrained)["fit_seconds"])
        log(f"{n} patients: retrain fit {retrain_s:.1f} s")
        results["patients"].append(n)
        results["studies"].append(len(dm.df))
        results["retrain_s"].append(retrain_s)
        unlearned = {}
        for method in args.methods:
            runs = []
            for _ in range(args.repeats):  # the fastest of a few runs: the least disturbed by other jobs
                t = time.perf_counter()
                unlearned[method] = api.unlearn(original, forget, method, root / f"unlearned-{method}",
                                                method_args=METHODS.get(method), epochs=args.unlearn_epochs,
                                                seed=args.seed, **common)
                runs.append(time.perf_counter() - t)
            seconds = min(runs)
            results.setdefault("unlearn_runs_s", {}).setdefault(method, []).append(runs)
            results["unlearn_s"][method].append(seconds)
            sampling = _provenance(unlearned[method])["sampling"]["parts"]
            results["unlearn_read_studies"].setdefault(method, []).append(
                sum(sampling[p]["studies"] for p in ("forget", "retain", "val")))
            log(f"{n} patients: unlearn {method} {seconds:.1f} s")
        t = time.perf_counter()
        api.evaluate(forget, original=original, unlearned=unlearned[args.methods[0]], retrained=retrained,
                     manifest=manifest, out=root / "audit", accelerator="cpu",
                     data={"image_size": args.image_size, "seed": args.seed})
        results["audit_s"].append(time.perf_counter() - t)
        log(f"{n} patients: audit {results['audit_s'][-1]:.1f} s")
        if n == args.compare_at:
            method = args.methods[0]
            retrained2 = root / "retrained-seed2" / "model.ckpt"
            if not (reuse and retrained2.is_file()):
                retrained2 = api.train(out=root / "retrained-seed2", exclude_patients=forget, epochs=args.epochs,
                                       seed=args.seed + 1, **common)
            t = time.perf_counter()
            full = api.unlearn(original, forget, method, root / f"unlearned-{method}-unbounded",
                               method_args=METHODS.get(method), epochs=args.unlearn_epochs, seed=args.seed,
                               **{**common, "data": {**common["data"], "bounded": False}})
            unbounded_s = time.perf_counter() - t
            results["bounded_vs_unbounded"] = {
                "patients": n, "method": method, "bounded_s": results["unlearn_s"][method][-1],
                "unbounded_s": unbounded_s,
                "metrics": compare_bounded(unlearned[method], full, (retrained, retrained2), data, forget,
                                           args.bootstrap, args.seed)}
            log(f"{n} patients: unbounded {method} {unbounded_s:.1f} s")
    first, last = 0, len(results["patients"]) - 1
    results["retrain_growth"] = results["retrain_s"][last] / results["retrain_s"][first]
    results["unlearn_growth"] = {m: s[last] / s[first] for m, s in results["unlearn_s"].items()}
    results["audit_growth"] = results["audit_s"][last] / results["audit_s"][first]
    results["date"] = time.strftime("%Y-%m-%d")
    results["command"] = "python benchmarks/scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["wall_s"] = time.perf_counter() - start
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(args.results)
    plot(results, args.results.with_suffix(".png"))
    log(f"retrain grew {results['retrain_growth']:.1f}x, unlearn "
        + ", ".join(f"{m} {g:.2f}x" for m, g in results["unlearn_growth"].items())
        + f", audit {results['audit_growth']:.2f}x from {results['patients'][first]} to {results['patients'][last]}")
    return results


if __name__ == "__main__":
    main()
