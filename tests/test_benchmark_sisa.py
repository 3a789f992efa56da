"""The SISA benchmark in its quick form (``python benchmarks/sisa.py --quick``): the result keys, bit-identical
unlearning for every K, and a retrained-shard record consistent with the request."""

from __future__ import annotations

import json

from tests.conftest import load_benchmark


def test_quick_sisa_benchmark(tmp_path):
    results = tmp_path / "sisa.json"
    sisa = load_benchmark("sisa", "sisa_benchmark")
    out = sisa.main(["--quick", f"--out={tmp_path / 'runs'}", f"--results={results}"])
    saved = json.loads(results.read_text())
    assert {"shards", "test_auc", "unlearn_time_ratio", "verdicts"} <= set(saved)
    assert saved["shards"] == [1, 2] == out["shards"]
    assert set(saved["test_auc"]) == {"unsharded", "1", "2"}
    assert all(0.0 <= v <= 1.0 for v in saved["test_auc"].values())
    assert all(v > 0 for v in saved["unlearn_time_ratio"].values())
    assert set(saved["verdicts"].values()) <= {"pass", "inconclusive", "fail"}
    assert all(saved["bit_identical"].values())  # SISA's result equals the from-scratch shards without the request
    for k in ("1", "2"):
        shards = [r["shard"] for r in saved["retrained_shards"][k]]
        assert shards == sorted(set(shards)) and all(0 <= s < int(k) for s in shards)
