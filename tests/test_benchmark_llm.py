"""benchmarks/llm.py without training: privleak in MUSE's convention (hand-computed), the method table as API
arguments, and a step's output and failure in its log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_benchmark

llm = load_benchmark("llm", "llm_benchmark")


def _result(mia_auc: float, utility: float = 1.0, seed: int = 0) -> dict:
    ratios = np.random.default_rng(seed).uniform(0.2, 0.8, 30).tolist()
    metrics = {"model_utility": utility, "forget": {"probability": 0.3}, "extraction": {"forget": {"rate": 0.0}}}
    return {"fp": {"metrics": metrics, "proxy": {"p_value": 0.5}, "mia_auc": mia_auc, "forget_truth_ratios": ratios}}


def test_privleak_is_muse_convention():
    """(A_ret - A_unl) / (1 - A_ret) * 100: the original (forget notes recognised, A = 0.9 against the retain-only
    model's 0.6) is -75 (under-unlearned); a model that over-forgets (A = 0.5) is +25."""
    reference = {**_result(0.6), "fit_seconds": 100.0}
    original = _result(0.9, seed=1)
    rows = [{"method": "NPO", "lr": 1e-4, "epochs": 3, "unlearn_seconds": 10.0, **_result(0.5, seed=2)}]
    chosen, table = llm.summarise(rows, reference, original, min_utility=0.95)
    assert chosen[0]["privleak"] == pytest.approx(25.0)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "| -75.0 |" in lines["original"]
    assert "| +0.0 |" in lines["retain-only"]
    assert "| +25.0 |" in lines["NPO"]


def test_method_table_holds_api_arguments():
    table = llm.method_table()
    assert table["FLAT-kl"][:2] == ("FLAT", {"divergence": "kl"})
    assert table["NPO"][:2] == ("NPO", {})
    assert all(isinstance(own, dict) for _, own, _ in table.values())


def test_a_step_logs_its_output_and_a_failure_names_the_log(tmp_path):
    def step(out):
        print(f"writing {out}")
        return Path(out)

    def broken(out):
        print("about to fail")
        raise ValueError("bad flag")

    assert llm._run(step, tmp_path / "ok.log", out="x") >= 0.0
    assert "writing x" in (tmp_path / "ok.log").read_text()
    with pytest.raises(RuntimeError, match="bad flag") as err:
        llm._run(broken, tmp_path / "fail.log", out="y")
    assert str(tmp_path / "fail.log") in str(err.value) and "about to fail" in str(err.value)
    assert "ValueError: bad flag" in (tmp_path / "fail.log").read_text()  # the traceback is in the log
