"""Leaderboard of every registered unlearning method on the synthetic hospital (issue 5).

6% of training patients (drawn per predominant label) forgotten, seeds 0, 1, 2; each method runs from its
``configs/unlearn/*.yaml`` with its learning rate chosen from a small grid by the validation selection score
(forget / retain-sample / val patients against the original model; never the test patients, never the retrained
model). Methods are sorted by their average |gap| to the retrained model over {forget AUC, forget F1, test AUC,
MIA AUC}; the table also gives the unlearning wall time as a fraction of the retrain's, and the noise floor (a
second retrain with another seed).

    python benchmarks/leaderboard.py              # every method, 3 seeds, ~1 h on a 2-core laptop
    python benchmarks/leaderboard.py --quick      # one small setting (a smoke run)
    python benchmarks/leaderboard.py --methods SalUn SCRUB --seeds 0

Results go to ``--out`` (default ``benchmarks/runs/leaderboard``): ``results.json`` and ``table.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import multimodal  # noqa: E402

from medforget.methods.classifier import get_method, list_methods  # noqa: E402

# lr grids where the default (config lr x 10 and x 50: the configs' lrs are for pretrained-scale models and barely move
# the small from-scratch classifier of the synthetic hospital) does not fit the method.
GRIDS: dict[str, list[float]] = {
    "GradientAscent": [1e-5, 5e-5],
    "NegGradPlus": [1e-4, 1e-3],
    "BoundaryShrink": [1e-4, 1e-3],
    "ForgetMI": [1e-3, 3e-3],
    "MultiDelete": [5e-4, 2e-3],
    "SCRUB": [1e-4, 5e-4],
    # relabelling methods over-forget quickly (a smoke run at 1e-3 pushed forget F1 far below the retrained level)
    "RandomLabel": [1e-4, 5e-4],
    "SalUn": [1e-4, 5e-4],
    "MultiGAN": [1e-4, 5e-4],
    "UNSIR": [1e-4, 1e-3],
}


def registry_methods() -> dict[str, tuple[str, list[str], list[float | None]]]:
    """Every registered method -> (its config file, no extra flags, its lr grid; ``[None]`` if training-free)."""
    configs = {}
    for path in sorted((multimodal.ROOT / "configs" / "unlearn").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        configs.setdefault(config["model"]["class_path"].rsplit(".", 1)[-1], (path.name, config))
    table = {}
    for name in list_methods():
        if get_method(name).retrains:  # SISA unlearns sharded ensembles only: benchmarks/sisa.py
            continue
        if name not in configs:
            raise SystemExit(f"no configs/unlearn/*.yaml for the registered method {name}")
        file, config = configs[name]
        if get_method(name).one_shot:
            grid: list[float | None] = [None]
        else:
            lr = float(config["model"].get("init_args", {}).get("lr", 1e-4))
            grid = GRIDS.get(name, [lr * 10, lr * 50])
        table[name] = (file, [], grid)
    return table


def main(argv: list[str] | None = None) -> list[dict]:
    return multimodal.main(argv, methods=registry_methods(), fractions=(0.06,), sort_by_gap=True, doc=__doc__,
                           out=multimodal.ROOT / "benchmarks" / "runs" / "leaderboard",
                           script="benchmarks/leaderboard.py")


if __name__ == "__main__":
    main()
