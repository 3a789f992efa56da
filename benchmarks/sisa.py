"""SISA benchmark (issue 15, item 3): accuracy of K-shard ensembles, exact-unlearning time, audit verdicts.

On one synthetic hospital, with one seeded forget request of ``--forget-patients`` training patients, this script

- trains the unsharded model (``train``) and retrains it without the request (the usual full retrain);
- for every K in ``--shards`` trains a K-shard, ``--slices``-slice ensemble (``train --shards K --slices S``), unlearns
  the request exactly (``unlearn --method SISA``), and trains the same shard layout from scratch without the request
  (``train --shards K --slices S --data.exclude_patients``): the exact target, which the unlearned ensemble must
  equal bit for bit (checked, ``bit_identical``);
- audits every K through the ``evaluate`` verb (original ensemble, SISA-unlearned ensemble, from-scratch target).

It writes ``benchmarks/results/sisa.json`` (``--results``) with

- ``shards``: the K values; ``test_auc``: ``{"unsharded": auc, "<K>": auc}`` (fused head, test patients, of the
  models trained on every patient);
- ``unlearn_time_ratio``: ``{"<K>": SISA unlearning seconds / seconds to retrain the same K-shard ensemble from
  scratch}`` (training time of both, measured in this run; ``unlearn_time_ratio_vs_unsharded_retrain`` divides by
  the unsharded retrain instead);
- ``unlearn_time_ratio_single_patient``: ``{"<K>": seconds to unlearn one patient (the request's first) / seconds
  to train the K-shard ensemble}``: SISA's intended setting, where one request touches one shard;
- ``verdicts``: ``{"<K>": audit verdict}``, with the criteria counts in ``audit``;
- ``retrained_shards``, ``bit_identical``, the sizes and seeds.

The per-slice epochs are ``--epochs`` / ``--slices`` (at least 1), so a 1-shard ensemble trains about as many
sample-epochs as the unsharded model.

    python benchmarks/sisa.py            # 300 patients, 32 px, 10 epochs, K = 1, 2, 4, 8, 2 slices, request of 10
    python benchmarks/sisa.py --quick    # a small hospital in a few minutes (what the tests run)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from multimodal import quiet  # noqa: E402

from medforget import api  # noqa: E402
from medforget.audit.classifier.measure import evaluate_models  # noqa: E402
from medforget.core.checkpoint import read_checkpoint  # noqa: E402
from medforget.core.io import write_json  # noqa: E402
from medforget.datamodules.dicom_report import DicomReportDataModule  # noqa: E402
from medforget.datamodules.splits import write_patient_ids  # noqa: E402
from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital  # noqa: E402


def provenance(path: Path) -> dict:
    return read_checkpoint(path)["medforget"]["provenance"]


def bit_identical(a: Path, b: Path) -> bool:
    """Every state-dict tensor equal (``torch.equal``) and the same tokenizers."""
    x, y = read_checkpoint(a), read_checkpoint(b)
    same = x["state_dict"].keys() == y["state_dict"].keys() and all(
        torch.equal(v, y["state_dict"][k]) for k, v in x["state_dict"].items())
    return bool(same and x["medforget"].get("ensemble") == y["medforget"].get("ensemble"))


def markdown(result: dict) -> str:
    """The RESULTS.md table of a result."""
    lines = ["| model | test AUC | SISA unlearn / retrain of the same shards | / unsharded retrain | shards retrained "
             "| bit-identical to the retrain | audit verdict (pass/inconclusive/fail criteria) "
             "| one-patient request: unlearn / training |",
             "|---|---|---|---|---|---|---|---|",
             f"| unsharded | {result['test_auc']['unsharded']:.3f} | - | - | - | - | - | - |"]
    for k in map(str, result["shards"]):
        audit = result["audit"][k]
        counts = "/".join(str(audit["criteria"][v]) for v in ("pass", "inconclusive", "fail"))
        lines.append(f"| K = {k} | {result['test_auc'][k]:.3f} | {result['unlearn_time_ratio'][k]:.2f} | "
                     f"{result['unlearn_time_ratio_vs_unsharded_retrain'][k]:.2f} | "
                     f"{len(result['retrained_shards'][k])} of {k} | {result['bit_identical'][k]} | "
                     f"{result['verdicts'][k].upper()} ({counts}) | "
                     f"{result['unlearn_time_ratio_single_patient'][k]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the unsharded model")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--slices", type=int, default=2)
    parser.add_argument("--forget-patients", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a small hospital, K = 1, 2 (for tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "runs" / "sisa")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "sisa.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.patients, args.image_size, args.epochs, args.shards, args.forget_patients = 60, 16, 2, [1, 2], 4
    start = time.perf_counter()
    root = args.out

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {message}", flush=True)

    manifest = generate_hospital(root / "hospital", SyntheticConfig(num_patients=args.patients,
                                                                     image_size=args.image_size, seed=args.seed),
                                 overwrite=True)
    data = {"image_size": args.image_size, "seed": args.seed, "batch_size": 32}
    run = {"manifest": manifest, "accelerator": args.accelerator, "overwrite": True, "seed": args.seed,
           "trainer": {"enable_progress_bar": False}}
    unlearn_data = {**data, "selection_fraction": 0.0}
    dm = DicomReportDataModule(str(manifest), image_size=args.image_size, seed=args.seed, cache_rate=0.0)
    dm.setup()
    train_patients = sorted(set(dm.df.loc[dm.indices["train"], "patient_id"].astype(str)))
    request = sorted(np.random.default_rng(args.seed).choice(train_patients, args.forget_patients, replace=False))
    forget = write_patient_ids([str(p) for p in request], root / "request.txt")
    epochs_per_slice = max(1, args.epochs // args.slices)

    def timed(fn, *a, **kw):
        begin = time.perf_counter()
        with quiet():
            out = fn(*a, **kw)
        return out, time.perf_counter() - begin

    unsharded, unsharded_wall = timed(api.train, out=root / "unsharded", epochs=args.epochs, data=data, **run)
    retrain, retrain_wall = timed(api.train, out=root / "unsharded_retrained", exclude_patients=forget,
                                  epochs=args.epochs, data=data, **run)
    retrain_fit = provenance(retrain)["fit_seconds"]
    log(f"unsharded model and its full retrain ({retrain_fit:.1f} s training)")
    eval_dm = DicomReportDataModule(str(manifest), image_size=args.image_size, seed=args.seed, batch_size=32,
                                    mode="evaluate", forget=str(forget), selection_fraction=0.0)
    with quiet():
        plain = evaluate_models({"unsharded": unsharded}, eval_dm, attacks=[], accelerator=args.accelerator)
    test_auc: dict[str, float] = {"unsharded": plain["models"]["unsharded"]["metrics"]["test"]["fused"]["auc"]}
    ratio, ratio_unsharded, verdicts, audits, retrained, identical, seconds = {}, {}, {}, {}, {}, {}, {}
    ratio_one, retrained_one = {}, {}
    for k in args.shards:
        sharded = {"shards": k, "slices": args.slices, "epochs": epochs_per_slice, "data": data, **run}
        ensemble, _ = timed(api.train, out=root / f"K{k}" / "original", **sharded)
        unlearned, unlearn_wall = timed(api.unlearn, ensemble, forget, "SISA", root / f"K{k}" / "unlearned",
                                        data=unlearn_data, **run)
        target, target_wall = timed(api.train, out=root / f"K{k}" / "retrained", exclude_patients=forget, **sharded)
        unlearn_s, target_s = provenance(unlearned)["unlearn_seconds"], provenance(target)["fit_seconds"]
        ratio[str(k)] = unlearn_s / target_s
        ratio_unsharded[str(k)] = unlearn_s / retrain_fit
        retrained[str(k)] = provenance(unlearned)["retrained"]
        identical[str(k)] = bit_identical(unlearned, target)
        seconds[str(k)] = {"unlearn_training_s": unlearn_s, "retrain_training_s": target_s,
                           "unlearn_wall_s": unlearn_wall, "retrain_wall_s": target_wall,
                           "original_training_s": provenance(ensemble)["fit_seconds"]}
        log(f"K={k}: unlearned in {unlearn_s:.1f} s vs {target_s:.1f} s retrain ({len(retrained[str(k)])} of {k} "
            f"shards retrained), bit-identical: {identical[str(k)]}")
        # the setting SISA is built for: one patient's request (one shard retrained, from that patient's slice)
        one = write_patient_ids([str(request[0])], root / "request_one.txt")
        single, _ = timed(api.unlearn, ensemble, one, "SISA", root / f"K{k}" / "unlearned_one", data=unlearn_data,
                          **run)
        ratio_one[str(k)] = provenance(single)["unlearn_seconds"] / provenance(ensemble)["fit_seconds"]
        retrained_one[str(k)] = provenance(single)["retrained"]
        report, _ = timed(api.evaluate, forget, original=ensemble, unlearned=unlearned, retrained=target,
                          manifest=manifest, out=root / f"K{k}" / "audit", accelerator=args.accelerator, data=data,
                          audit={"plots": False})
        models = report["runs"][0]["models"]
        test_auc[str(k)] = models["original"]["metrics"]["test"]["fused"]["auc"]
        verdicts[str(k)] = report["verdict"]
        audits[str(k)] = {"verdict": report["verdict"], "criteria": {
            v: sum(c["verdict"] == v for c in report["criteria"]) for v in ("pass", "inconclusive", "fail")},
            "unlearned_test_auc": models["unlearned"]["metrics"]["test"]["fused"]["auc"],
            "unlearned_forget_auc": models["unlearned"]["metrics"]["forget"]["fused"]["auc"]}
        log(f"K={k}: test AUC {test_auc[str(k)]:.3f}, audit {verdicts[str(k)].upper()}")
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/sisa.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "patients": args.patients, "train_patients": len(train_patients), "image_size": args.image_size,
        "request_patients": args.forget_patients, "slices": args.slices, "epochs_unsharded": args.epochs,
        "epochs_per_slice": epochs_per_slice, "seed": args.seed, "accelerator": args.accelerator,
        "shards": args.shards,
        "test_auc": test_auc,
        "unlearn_time_ratio": ratio,
        "unlearn_time_ratio_vs_unsharded_retrain": ratio_unsharded,
        "unlearn_time_ratio_single_patient": ratio_one,
        "retrained_shards_single_patient": retrained_one,
        "verdicts": verdicts,
        "audit": audits,
        "retrained_shards": retrained,
        "bit_identical": identical,
        "seconds": {"unsharded_retrain_training_s": retrain_fit, "unsharded_retrain_wall_s": retrain_wall,
                    "unsharded_train_wall_s": unsharded_wall, **seconds},
        "total_seconds": time.perf_counter() - start,
    }
    write_json(result, args.results)
    print(json.dumps({k: result[k] for k in ("shards", "test_auc", "unlearn_time_ratio", "verdicts",
                                             "bit_identical")}, indent=1))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
