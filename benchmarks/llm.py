"""LLM unlearning benchmark on the synthetic clinical-notes corpus (issue 6).

One original model (``train-lm``, every patient but the holdout) and one retain-only model (same recipe without the
forget patients, ``--data.exclude_forget true``); every registered method (FLAT once per divergence) unlearns the
original through the real ``unlearn-lm`` CLI, once per learning rate of a small grid. Each result is evaluated with
:mod:`medforget.audit.lm` as it is and after 4-bit round-to-nearest quantization (Zhang et al., ICLR 2025).

**Choosing the learning rate without the retain-only model.** A hospital cannot retrain to tune its unlearning run,
so the grid point is chosen by a proxy that needs no retraining: the holdout patients (never trained on) stand for
"never seen", and the chosen run is the one whose forget-set truth ratios are closest to its own holdout truth ratios
(largest KS p-value of forget vs holdout, the forget-quality test with holdout patients in place of the retain-only
model), among the runs that keep at least 95% of the original model's utility. The retain-only model is used only
for the reported forget quality, utility ratio and extraction floor.

The table gives, per method: forget quality (TOFU: KS p-value of the forget truth ratios against the retain-only
model's; > 0.05 counts as forgotten), model utility (harmonic mean of retain probability, ROUGE-L and truth-ratio
score) as a ratio to the retain-only model's, the identifier extraction rate (share of forget patients whose MRN or
date of birth greedy generation emits) before and after 4-bit quantization, MUSE's privleak with Min-K%++ (0 = the
retain-only model's), and the unlearning wall time as a fraction of the retain-only model's training time.

    python benchmarks/llm.py                       # every method, 3 learning rates, on the CPU
    python benchmarks/llm.py --accelerator gpu --jobs 10   # 269 s on one H100 with 16 CPU cores
    python benchmarks/llm.py --quick               # 60 patients, small model, 1 learning rate: a smoke run
    python benchmarks/llm.py --methods NPO SURE

Results go to ``--out`` (default ``benchmarks/runs/llm``): ``results.json`` (every run) and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (registered class, extra flags, lr grid)
FLAT_DIVERGENCES = ("kl", "js", "pearson", "tv")
DEFAULT_GRID = [1e-4, 3e-4, 1e-3]
GRIDS = {
    "SURE": [3e-4, 1e-3, 3e-3],  # designed for large steps on a small (salient) part of the model
    "RMU": [2e-3, 5e-3, 1e-2],  # updates three layers' MLPs only
    "FLAT": [3e-5, 1e-4, 3e-4],  # forget data only: 1e-3 collapsed the model in a first trial
}
HEADLINE_ATTACK = "min_k_plus_plus"


def method_table() -> dict[str, tuple[str, list[str], list[float]]]:
    """Every registered LM method (FLAT once per divergence) with its flags and learning-rate grid."""
    import medforget.methods.lm  # noqa: F401  (registers the methods)
    from medforget.methods.lm.base import LMUnlearningMethod

    table: dict[str, tuple[str, list[str], list[float]]] = {}
    for name in sorted(LMUnlearningMethod.registry):
        grid = GRIDS.get(name, DEFAULT_GRID)
        if name == "FLAT":
            for div in FLAT_DIVERGENCES:
                table[f"FLAT-{div}"] = (name, [f"--model.init_args.divergence={div}"], grid)
        else:
            table[name] = (name, [], grid)
    return table


def _run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (rc {done.returncode}); log {log}:\n" + "\n".join(tail))
    return time.perf_counter() - start


def _threads(jobs: int) -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, jobs)))


def _device(accelerator: str) -> str:
    import torch

    return "cuda" if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()) else "cpu"


def evaluate_checkpoint(path: Path, probes_args: dict[str, Any], accelerator: str, quantize: bool = True
                        ) -> dict[str, Any]:
    """Metrics of one model as is and (``quantize``) after 4-bit RTN quantization."""
    from medforget.audit.lm import (
        attack_scores,
        build_probes,
        evaluate_language_model,
        forget_quality,
        mia_auc,
        quantize_lm,
    )
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.systems.lm import load_lm

    dm = ClinicalNotesDataModule(**probes_args["data"])
    probes = build_probes(dm, retain_questions=probes_args["retain_questions"])
    model = load_lm(path).to(_device(accelerator))
    out: dict[str, Any] = {}
    variants = [("fp", model)] + ([("int4", quantize_lm(model, "int4"))] if quantize else [])
    for name, m in variants:
        ev = evaluate_language_model(m, probes, truth_ratio_base=probes_args["truth_ratio_base"], mia=name == "fp")
        row = {"metrics": ev.metrics, "seconds": ev.seconds}
        # the proxy for choosing hyper-parameters: forget vs holdout under the same model (no retraining needed)
        row["proxy"] = forget_quality(ev.truth_ratios["forget"], ev.truth_ratios["holdout"])
        if name == "fp":
            members = attack_scores(HEADLINE_ATTACK, ev.member_tokens, probes.member_texts)
            nonmembers = attack_scores(HEADLINE_ATTACK, ev.nonmember_tokens, probes.nonmember_texts)
            row["mia_auc"] = mia_auc(members, nonmembers)
        row["forget_truth_ratios"] = ev.truth_ratios["forget"].tolist()
        out[name] = row
    return out


def unlearn_and_evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """One grid point: ``unlearn-lm`` through the CLI (a subprocess), then the evaluation (in this worker)."""
    _threads(job["jobs"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "medforget", "unlearn-lm", "--method", job["cls"], f"--ckpt={job['original']}",
           f"--out={out}", "--overwrite=true", f"--model.init_args.lr={job['lr']}",
           f"--trainer.max_epochs={job['epochs']}", f"--trainer.accelerator={job['accelerator']}",
           "--trainer.enable_progress_bar=false", f"--data.batch_size={job['batch_size']}",
           f"--seed_everything={job['seed']}", *job["data_flags"], *job["flags"]]
    wall = _run(cmd, out / "unlearn.log")
    from medforget.systems.lm import load_lm

    provenance = load_lm(out / "model.ckpt").provenance
    result = evaluate_checkpoint(out / "model.ckpt", job["probes"], job["accelerator"])
    return {"method": job["name"], "lr": job["lr"], "epochs": job["epochs"], "wall_seconds": wall,
            "unlearn_seconds": provenance.get("unlearn_seconds"), **result}


def summarise(rows: list[dict], reference: dict[str, Any], original: dict[str, Any], min_utility: float) -> tuple[
        list[dict], str]:
    """Choose each method's grid point by the holdout proxy and format the table."""
    from medforget.audit.lm import forget_quality, privleak

    retain_ratios = np.asarray(reference["fp"]["forget_truth_ratios"])
    retain_utility = reference["fp"]["metrics"]["model_utility"]
    original_utility = original["fp"]["metrics"]["model_utility"]
    retain_extraction = reference["fp"]["metrics"]["extraction"]["forget"]["rate"]

    def fields(result: dict[str, Any], seconds: float | None, retain_seconds: float) -> dict[str, Any]:
        fp = result["fp"]
        q = result.get("int4", fp)
        return {
            "forget_quality": forget_quality(np.asarray(fp["forget_truth_ratios"]), retain_ratios)["p_value"],
            "forget_quality_int4": forget_quality(np.asarray(q["forget_truth_ratios"]), retain_ratios)["p_value"],
            "utility_ratio": fp["metrics"]["model_utility"] / retain_utility,
            "forget_probability": fp["metrics"]["forget"]["probability"],
            "extraction": fp["metrics"]["extraction"]["forget"]["rate"],
            "extraction_int4": q["metrics"]["extraction"]["forget"]["rate"],
            "privleak": privleak(fp.get("mia_auc", math.nan), reference["fp"]["mia_auc"]),
            "proxy_p": fp["proxy"]["p_value"],
            "time_ratio": (seconds / retain_seconds) if seconds and retain_seconds else math.nan,
        }

    retain_seconds = reference["fit_seconds"]
    chosen = []
    for name in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == name]
        keep = [r for r in runs if r["fp"]["metrics"]["model_utility"] >= min_utility * original_utility] or runs
        best = max(keep, key=lambda r: (r["fp"]["proxy"]["p_value"], r["fp"]["metrics"]["model_utility"]))
        chosen.append({"method": name, "lr": best["lr"], "epochs": best["epochs"],
                       **fields(best, best["unlearn_seconds"], retain_seconds)})
    chosen.sort(key=lambda c: (-(c["forget_quality"] > 0.05 and c["utility_ratio"] >= 0.9
                                 and c["extraction_int4"] <= retain_extraction + 1e-9), -c["forget_quality"]))

    def meets(c: dict) -> str:
        ok = c["forget_quality"] > 0.05 and c["utility_ratio"] >= 0.9 and c["extraction_int4"] <= retain_extraction
        return "yes" if ok else "no"

    header = ("| method | lr | forget quality (p) | p after 4-bit | utility / retain | forget prob | extraction | "
              "extraction 4-bit | privleak (Min-K%++) | proxy p (forget vs holdout) | time / retain | target |")
    lines = [header, "|" + "---|" * 12]
    for label, result, seconds in (("original", original, None), ("retain-only", reference, None)):
        f = fields(result, seconds, retain_seconds)
        lines.append(f"| {label} | – | {f['forget_quality']:.2g} | {f['forget_quality_int4']:.2g} | "
                     f"{f['utility_ratio']:.3f} | {f['forget_probability']:.3f} | {f['extraction']:.2f} | "
                     f"{f['extraction_int4']:.2f} | {f['privleak']:+.1f} | {f['proxy_p']:.2g} | – | – |")
    for c in chosen:
        lines.append(f"| {c['method']} | {c['lr']:g} | {c['forget_quality']:.2g} | {c['forget_quality_int4']:.2g} | "
                     f"{c['utility_ratio']:.3f} | {c['forget_probability']:.3f} | {c['extraction']:.2f} | "
                     f"{c['extraction_int4']:.2f} | {c['privleak']:+.1f} | {c['proxy_p']:.2g} | "
                     f"{c['time_ratio']:.3f} | {meets(c)} |")
    return chosen, "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    table = method_table()
    parser.add_argument("--methods", nargs="+", default=list(table), choices=list(table))
    parser.add_argument("--num-patients", type=int, default=200)
    parser.add_argument("--forget-fraction", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the original / retain-only models")
    parser.add_argument("--unlearn-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="unlearning batch size")
    parser.add_argument("--seed", type=int, default=0, help="draws the forget set and seeds every run")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"])
    parser.add_argument("--jobs", type=int, default=1, help="grid points run in parallel")
    parser.add_argument("--min-utility", type=float, default=0.95,
                        help="the proxy only considers runs keeping this share of the original model's utility")
    parser.add_argument("--truth-ratio-base", default="answer", choices=["answer", "paraphrase"])
    parser.add_argument("--no-tune", action="store_true", help="use the first learning rate of each grid only")
    parser.add_argument("--quick", action="store_true", help="60 patients, a small model, one lr: a smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "llm")
    args = parser.parse_args(argv)
    # the seed draws the forget / holdout patients (split_seed) and seeds training and unlearning
    data = {"num_patients": args.num_patients, "forget_fraction": args.forget_fraction, "split_seed": args.seed}
    model_flags: list[str] = []
    if args.quick:
        data = {"num_patients": 60, "forget_fraction": 0.1, "split_seed": args.seed}
        model_flags = ["--model.hidden_size=64", "--model.num_layers=2"]
        args.epochs, args.unlearn_epochs, args.no_tune = 10, 3, True
    data_flags = [f"--data.{k}={v}" for k, v in data.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. the original and the retain-only model (in parallel when --jobs > 1)
    common = [sys.executable, "-m", "medforget", "train-lm", *data_flags, *model_flags,
              f"--trainer.max_epochs={args.epochs}", f"--trainer.accelerator={args.accelerator}",
              "--trainer.enable_progress_bar=false", f"--seed_everything={args.seed}", "--overwrite=true"]
    targets = {"original": [], "retain": ["--data.exclude_forget=true"]}
    print(f"training the original and the retain-only model ({args.epochs} epochs)", flush=True)
    procs = []
    for name, extra in targets.items():
        (args.out / name).mkdir(parents=True, exist_ok=True)
        cmd = [*common, *extra, f"--out={args.out / name}"]
        if args.jobs > 1:
            log = open(args.out / name / "train.log", "w")  # noqa: SIM115
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log, name))
        else:
            _run(cmd, args.out / name / "train.log")
    for proc, log, name in procs:
        if proc.wait() != 0:
            raise SystemExit(f"training the {name} model failed; see {log.name}")
        log.close()

    from medforget.systems.lm import load_lm

    probes = {"data": data, "retain_questions": 100, "truth_ratio_base": args.truth_ratio_base}
    _threads(1)
    reference = evaluate_checkpoint(args.out / "retain" / "model.ckpt", probes, args.accelerator)
    reference["fit_seconds"] = load_lm(args.out / "retain" / "model.ckpt").provenance["fit_seconds"]
    original = evaluate_checkpoint(args.out / "original" / "model.ckpt", probes, args.accelerator)
    print(f"retain-only training: {reference['fit_seconds']:.0f} s", flush=True)

    # 2. every method x learning rate
    jobs = []
    for name in args.methods:
        cls, flags, grid = table[name]
        for lr in grid[:1] if args.no_tune else grid:
            jobs.append({"name": name, "cls": cls, "flags": flags, "lr": lr, "epochs": args.unlearn_epochs,
                         "batch_size": args.batch_size, "seed": args.seed, "accelerator": args.accelerator,
                         "jobs": args.jobs, "data_flags": data_flags, "probes": probes,
                         "original": str(args.out / "original" / "model.ckpt"),
                         "out": str(args.out / "unlearned" / f"{name}-lr{lr:g}")})
    rows: list[dict] = []
    print(f"{len(jobs)} unlearning runs, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(unlearn_and_evaluate, job): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                rows.append(future.result())
            except Exception as err:  # one failed run must not lose the others
                print(f"  {job['name']} lr={job['lr']:g}: FAILED: {err}", flush=True)
                continue
            r = rows[-1]
            (args.out / "runs.json").write_text(json.dumps(rows, indent=1, default=float))  # partial results
            print(f"  {r['method']:<12} lr={r['lr']:<7g} proxy p={r['fp']['proxy']['p_value']:.3g} "
                  f"utility={r['fp']['metrics']['model_utility']:.3f} "
                  f"extraction={r['fp']['metrics']['extraction']['forget']['rate']:.2f}/"
                  f"{r['int4']['metrics']['extraction']['forget']['rate']:.2f}", flush=True)
    order = {j["name"]: i for i, j in enumerate(jobs)}
    rows.sort(key=lambda r: (order[r["method"]], r["lr"]))
    chosen, text = summarise(rows, reference, original, args.min_utility)
    results = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "original": original, "retain": reference, "runs": rows, "chosen": chosen}
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    command = "python benchmarks/llm.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Command: `{command.strip()}`  \nWall time: {time.perf_counter() - start:.0f} s; "
              f"{data['num_patients']} patients, forget {data['forget_fraction']:.0%}, {args.epochs} training "
              f"epochs, {args.unlearn_epochs} unlearning epochs, accelerator {args.accelerator}, {args.jobs} job(s).")
    (args.out / "table.md").write_text(header + "\n\n" + text + "\n")
    print("\n" + header + "\n\n" + text)
    return chosen


if __name__ == "__main__":
    main()
