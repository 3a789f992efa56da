"""The demo's stage times, this tree against a baseline commit, side by side in one run on one machine (issue 15).

Each round runs ``python -m medforget demo`` of the baseline commit (checked out into a temporary git worktree) and
of this tree, one after the other (their order alternates between rounds), with the same interpreter and the same
seed, and reads the stage times each demo writes to ``demo.json``. Timings on a shared machine vary by 2-3x from one
minute to the next; alternating rounds and reporting the ratio of the sums keeps the comparison fair.

    python benchmarks/demo_speed.py                          # baseline 042ab0d (2026-12-02), 1 round
    python benchmarks/demo_speed.py --baseline <commit> --rounds 2

Writes ``benchmarks/results/demo_speed.json``: per round and tree the stage seconds and verdict, and ``ratio``
(this tree's total / the baseline's total over all rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "042ab0d"  # main on 2026-12-02, before the bounded unlearning and the faster demo recipe


def run_demo(tree: Path, out: Path, seed: int) -> dict:
    """``python -m medforget demo`` of ``tree`` (imported from ``tree`` first), its ``demo.json`` and wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    check = subprocess.run([sys.executable, "-c", "import medforget, sys; print(medforget.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd=tree)
    if not check.stdout.strip().startswith(str(tree)):
        raise RuntimeError(f"{tree}: python imports medforget from {check.stdout.strip()}, not from the tree")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medforget", "demo", f"--out={out}", f"--seed={seed}"], env=env, cwd=tree,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    info = json.loads((out / "demo.json").read_text())
    table = out / "table.txt"
    return {"stage_seconds": info["stage_seconds"], "total_s": sum(info["stage_seconds"].values()), "wall_s": wall,
            "verdict": info["verdict"], "table": table.read_text() if table.is_file() else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="git commit of the baseline")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--also", nargs="*", default=[], help="further commits to run in each round (e.g. an "
                        "intermediate one, to show that a refactoring left the demo's table unchanged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "demo_speed.json")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="medforget-demo-speed-") as tmp:
        trees = {}
        for name, ref in (("baseline", args.baseline), *((c, c) for c in args.also)):
            trees[name] = Path(tmp) / f"tree-{name}"
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), ref], cwd=ROOT, check=True,
                           capture_output=True)
        try:
            for r in range(args.rounds):
                order = [*trees.items(), ("this", ROOT)]
                if r % 2:
                    order.reverse()
                result = {}
                for name, tree in order:
                    print(f"round {r + 1}/{args.rounds}: demo of {name} ...", flush=True)
                    result[name] = run_demo(tree, Path(tmp) / f"{name}-{r}", args.seed)
                    print(f"  {result[name]['total_s']:.1f} s of stages, verdict {result[name]['verdict']}",
                          flush=True)
                rounds.append(result)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False,
                               capture_output=True)
    total = {name: sum(r[name]["total_s"] for r in rounds) for name in rounds[0]}
    same_table = {name: all(r[name]["table"] == r["baseline"]["table"] for r in rounds) for name in rounds[0]}
    results = {"baseline_commit": args.baseline, "commit": commit, "also": args.also, "seed": args.seed,
               "rounds": rounds, "same_table_as_baseline": same_table, "totals_s": total,
               "baseline_total_s": total["baseline"], "total_s": total["this"],
               "ratio": total["this"] / total["baseline"], "target_ratio": 0.60,
               "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/demo_speed.py"}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = args.results.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(results, indent=2))
    tmp_path.replace(args.results)
    print(f"stages: {total['this']:.1f} s against {total['baseline']:.1f} s: ratio {results['ratio']:.2f}")
    return results


if __name__ == "__main__":
    main()
