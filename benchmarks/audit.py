"""Membership-inference suite benchmark: every attack, including the opt-in LiRA and RMIA with K reference models,
on the models of the multimodal benchmark (issue 4).

For each seed it audits the original model, an unlearned model (``--method``, the learning rate the multimodal
benchmark chose by validation), the retrained model and a second, reseeded retrained model (the noise floor), and
prints each attack's AUC (forget patients = members vs test patients = non-members) as mean ± std over seeds, the
original model's TPR at 1% FPR, and the cost of the reference models. The sanity check of the audit: on the two
retrained models every attack should be near 0.5 (they never saw the forget patients); on the original model, well
above.

    python benchmarks/multimodal.py --fractions 0.06      # first: the models (cached in benchmarks/runs/multimodal)
    python benchmarks/audit.py                            # 3 seeds, 6%, K = 4 reference models: ~12 min on 2 cores

Results go to ``--out`` (default ``benchmarks/runs/audit``): one audit directory per seed and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from multimodal import quiet  # noqa: E402

from medforget.audit.classifier.audit import run_audit  # noqa: E402
from medforget.audit.classifier.config import AuditConfig  # noqa: E402
from medforget.audit.classifier.mia import MembershipAttack  # noqa: E402

MODELS = ("original", "unlearned", "retrained", "retrained-reseeded")


def chosen_lr(results: list[dict], seed: int, fraction: float, method: str) -> float:
    for row in results:
        if row["seed"] == seed and abs(row["fraction"] - fraction) < 1e-9 and row["method"] == method:
            return row["lr"]
    raise SystemExit(f"no {method} row for seed {seed}, {fraction:.0%} in the multimodal results; run "
                     f"python benchmarks/multimodal.py --fractions {fraction} --seeds {seed} first")


def fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "multimodal",
                        help="the multimodal benchmark's output directory")
    parser.add_argument("--fraction", type=float, default=0.06)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="ForgetMI-multimodal")
    parser.add_argument("--reference-models", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "audit")
    args = parser.parse_args(argv)

    results = json.loads((args.runs / "results.json").read_text())
    attacks = sorted(MembershipAttack.registry)
    auc: dict[tuple[str, str], list[float]] = {}
    tpr: dict[tuple[str, str], list[float]] = {}
    reference_seconds, attack_seconds = [], []
    for seed in args.seeds:
        setting = args.runs / f"seed{seed}" / f"forget{round(args.fraction * 100)}"
        lr = chosen_lr(results, seed, args.fraction, args.method)
        checkpoints = {
            "original": args.runs / f"seed{seed}" / "original" / "model.ckpt",
            "unlearned": setting / args.method / f"lr{lr:g}" / "model.ckpt",
            "retrained": setting / "retrained" / "model.ckpt",
            "retrained-reseeded": setting / "retrained-reseeded" / "model.ckpt",
        }
        missing = [str(p) for p in checkpoints.values() if not p.is_file()]
        if missing:
            raise SystemExit(f"missing checkpoints {missing}; run python benchmarks/multimodal.py first")
        data = {"manifest": str(args.runs / f"seed{seed}" / "hospital" / "manifest.csv"),
                "image_size": args.image_size, "seed": seed}
        out = args.out / f"seed{seed}"
        start = time.perf_counter()
        with quiet():
            report = run_audit([checkpoints], [setting / "forget.txt"], data, out,
                               AuditConfig(reference_models=args.reference_models, relearn_steps=0, quantization=[],
                                           seed=seed), accelerator=args.accelerator)
        total = time.perf_counter() - start
        design_file = out / "reference_models" / "run0" / "design.json"
        ref = sum(m["fit_seconds"] for m in json.loads(design_file.read_text())["models"])
        reused = design_file.stat().st_mtime < time.time() - total  # cached from an earlier run
        reference_seconds.append(ref)
        attack_seconds.append(total - (0.0 if reused else ref))
        models = report["runs"][0]["models"]
        for model in MODELS:
            for attack in attacks:
                auc.setdefault((model, attack), []).append(models[model]["mia"][attack]["auc"])
                tpr.setdefault((model, attack), []).append(models[model]["mia"][attack]["tpr@1%fpr"])
        loss = ", ".join(f"{m} {models[m]['mia']['LossAttack']['auc']:.3f}" for m in MODELS)
        print(f"seed {seed}: audited in {total:.0f} s ({ref:.0f} s training {args.reference_models} reference "
              f"models{', cached' if reused else ''}); loss-attack AUC {loss}", flush=True)

    header = ["attack", *[f"AUC {m}" for m in MODELS], "max \\|AUC − 0.5\\| retrained", "TPR@1%FPR original"]
    rows = []
    for attack in attacks:
        retrained = auc[("retrained", attack)] + auc[("retrained-reseeded", attack)]
        rows.append([attack, *[fmt(auc[(m, attack)]) for m in MODELS],
                     f"{max(abs(v - 0.5) for v in retrained):.3f}", fmt(tpr[("original", attack)])])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    fraction = f"{args.fraction:.0%}"
    caption = (f"{len(args.seeds)} seeds, {fraction} forget set, unlearned = {args.method}; LiRA/RMIA with "
               f"K = {args.reference_models} reference models: {fmt(reference_seconds, 0)} s of training per audit "
               f"(cached for later audits); everything else {fmt(attack_seconds, 0)} s per audit (2-core CPU)")
    table = "\n".join(lines) + "\n\n" + caption + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    print("\n" + table)
    return table


if __name__ == "__main__":
    main()
