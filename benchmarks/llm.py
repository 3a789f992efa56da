"""LLM unlearning benchmark on the synthetic clinical-notes corpus (issue 6).

One original model (``api.train_lm``, every patient but the holdout) and one retain-only model (same recipe without
the forget patients, ``exclude_forget=True``); every registered method (FLAT once per divergence) unlearns the
original through ``api.unlearn_lm`` (the ``unlearn-lm`` verb), once per learning rate of a small grid, each run in a
worker process with its output in ``<run>/unlearn.log``. Each result is evaluated with
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
date of birth greedy generation emits) before and after 4-bit quantization, MUSE's privleak with Min-K%++
(:func:`medforget.audit.lm.mia.privleak`, MUSE's convention ``(A_ret - A_unl) / (1 - A_ret) * 100``: 0 = the
retain-only model's, negative = the forget notes are still recognised (under-unlearned), positive = they stand out as
less likely than never-seen notes (over-unlearned)), and the unlearning wall time as a fraction of the retain-only
model's training time.

    python benchmarks/llm.py                       # every method, 3 learning rates, on the CPU
    python benchmarks/llm.py --accelerator gpu --jobs 10   # 269 s on one H100 with 16 CPU cores
    python benchmarks/llm.py --quick               # 60 patients, small model, 1 learning rate: a smoke run
    python benchmarks/llm.py --methods NPO SURE

Results go to ``--out`` (default ``benchmarks/runs/llm``): ``results.json`` (every run) and ``table.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (registered class, the method's own arguments besides lr, lr grid)
FLAT_DIVERGENCES = ("kl", "js", "pearson", "tv")
DEFAULT_GRID = [1e-4, 3e-4, 1e-3]
GRIDS = {
    "SURE": [3e-4, 1e-3, 3e-3],  # designed for large steps on a small (salient) part of the model
    "RMU": [2e-3, 5e-3, 1e-2],  # updates three layers' MLPs only
    "FLAT": [3e-5, 1e-4, 3e-4],  # forget data only: 1e-3 collapsed the model in a first trial
}
HEADLINE_ATTACK = "min_k_plus_plus"
PRIVLEAK_NOTE = ("privleak: MUSE's convention (A_ret - A_unl) / (1 - A_ret) * 100 of the Min-K%++ attack AUC A (forget "
                 "notes vs holdout notes): 0 = the retain-only model, negative = under-unlearned, positive = "
                 "over-unlearned.")


def method_table() -> dict[str, tuple[str, dict[str, Any], list[float]]]:
    """Every registered LM method (FLAT once per divergence) with its own arguments and learning-rate grid."""
    import medforget.methods.lm  # noqa: F401  (registers the methods)
    from medforget.methods.lm.base import LMUnlearningMethod

    table: dict[str, tuple[str, dict[str, Any], list[float]]] = {}
    for name in sorted(LMUnlearningMethod.registry):
        grid = GRIDS.get(name, DEFAULT_GRID)
        if name == "FLAT":
            for div in FLAT_DIVERGENCES:
                table[f"FLAT-{div}"] = (name, {"divergence": div}, grid)
        else:
            table[name] = (name, {}, grid)
    return table


@contextlib.contextmanager
def _logged(log: Path) -> Iterator[None]:
    """This process's output into ``log``: ``sys.stdout``/``sys.stderr`` and file descriptors 1 and 2 (Lightning's
    handlers and C extensions)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "w", buffering=1) as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
    finally:
        for fd, saved_fd in zip((1, 2), saved, strict=True):
            os.dup2(saved_fd, fd)
            os.close(saved_fd)


def _run(step: Callable[..., Path], log: Path, **kwargs: Any) -> float:
    """``step(**kwargs)`` (an API function) with its output in ``log``; its wall time. A failure names the log and
    shows its tail."""
    import traceback

    start = time.perf_counter()
    try:
        with _logged(log):
            try:
                step(**kwargs)
            except Exception:
                traceback.print_exc()
                raise
    except Exception as err:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{step.__name__} ({kwargs.get('out')}) failed: {err}; log {log}:\n"
                           + "\n".join(tail)) from err
    return time.perf_counter() - start


def train_model(job: dict[str, Any]) -> float:
    """One of the two trained models (``api.train_lm``, in a worker process); its wall time."""
    from medforget import api

    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    return _run(api.train_lm, out / "train.log", out=out, **job["kwargs"])


_DEFAULT_THREADS: list[int] = []


def _threads(jobs: int | None) -> None:
    """Torch's threads: the cores shared by ``jobs`` evaluations, or with ``None`` this process's default (as a fresh
    process has it: ``OMP_NUM_THREADS`` or the cores), which the unlearning runs use, as the trainings they are timed
    against do."""
    import torch

    if not _DEFAULT_THREADS:
        _DEFAULT_THREADS.append(torch.get_num_threads())
    torch.set_num_threads(_DEFAULT_THREADS[0] if jobs is None else max(1, (os.cpu_count() or 2) // max(1, jobs)))


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
    """One grid point: ``api.unlearn_lm``, then the evaluation (both in this worker process)."""
    from medforget import api

    _threads(None)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    wall = _run(api.unlearn_lm, out / "unlearn.log", ckpt=job["original"], method=job["cls"], out=out,
                method_args={"lr": job["lr"], **job["method_args"]}, epochs=job["epochs"],
                accelerator=job["accelerator"], seed=job["seed"], overwrite=True,
                data={"batch_size": job["batch_size"], **job["data"]}, trainer={"enable_progress_bar": False})
    _threads(job["jobs"])
    from medforget.systems.lm import load_lm

    provenance = load_lm(out / "model.ckpt").provenance
    result = evaluate_checkpoint(out / "model.ckpt", job["probes"], job["accelerator"])
    return {"method": job["name"], "lr": job["lr"], "epochs": job["epochs"], "wall_seconds": wall,
            "unlearn_seconds": provenance.get("unlearn_seconds"), **result}


def summarise(rows: list[dict], reference: dict[str, Any], original: dict[str, Any], min_utility: float) -> tuple[
        list[dict], str]:
    """Choose each method's grid point by the holdout proxy and format the table."""
    from medforget.audit.lm.metrics import forget_quality
    from medforget.audit.lm.mia import privleak  # MUSE's convention: negative = under-unlearned

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
    model: dict[str, Any] | None = None
    if args.quick:
        data = {"num_patients": 60, "forget_fraction": 0.1, "split_seed": args.seed}
        model = {"hidden_size": 64, "num_layers": 2}
        args.epochs, args.unlearn_epochs, args.no_tune = 10, 3, True
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # 1. the original and the retain-only model, each in a worker process (both at once when --jobs > 1)
    common = {"data": data, "model": model, "epochs": args.epochs, "accelerator": args.accelerator,
              "trainer": {"enable_progress_bar": False}, "seed": args.seed, "overwrite": True}
    print(f"training the original and the retain-only model ({args.epochs} epochs)", flush=True)
    with ProcessPoolExecutor(max_workers=min(2, args.jobs), mp_context=get_context("spawn")) as pool:
        trainings = {name: pool.submit(train_model, {"out": str(args.out / name),
                                                     "kwargs": {**common, "exclude_forget": name == "retain"}})
                     for name in ("original", "retain")}
        for name, future in trainings.items():
            try:
                future.result()
            except Exception as err:
                raise SystemExit(f"training the {name} model failed: {err}") from err

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
        cls, method_args, grid = table[name]
        for lr in grid[:1] if args.no_tune else grid:
            jobs.append({"name": name, "cls": cls, "method_args": method_args, "lr": lr, "epochs": args.unlearn_epochs,
                         "batch_size": args.batch_size, "seed": args.seed, "accelerator": args.accelerator,
                         "jobs": args.jobs, "data": data, "probes": probes,
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
    text += "\n\n" + PRIVLEAK_NOTE
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
