"""The language-model audit on the console: plain-text tables of the models, the criteria and the SemEval-2025
Task 4 scores (``table.txt`` of ``medforget evaluate-lm``)."""

from __future__ import annotations

import math
from typing import Any

from medforget.audit.lm.criteria import lm_verdict
from medforget.audit.render import get_path, num, text_table
from medforget.audit.verdict import NA


def format_lm_table(report: dict[str, Any]) -> str:
    """A plain-text table: knowledge, utility, extraction and the headline attack per model, then gaps; then the
    SemEval-2025 Task 4 scores."""
    headline = (report.get("headline") or {}).get("attack") or report["config"]["audit"]["headline_attack"]
    columns = (("forget prob", ("forget", "probability")), ("forget ROUGE", ("forget", "rouge_l_recall")),
               ("forget TR", ("forget", "truth_ratio_forget_stat")), ("FQ p", ("forget_quality", "p_value")),
               ("retain prob", ("retain", "probability")), ("retain ROUGE", ("retain", "rouge_l_recall")),
               ("utility", ("model_utility",)), ("extract forget", ("extraction", "forget", "rate")),
               ("extract holdout", ("extraction", "holdout", "rate")), (f"AUC {headline}", ("mia", headline, "auc")),
               ("privleak %", ("mia", headline, "privleak")))

    rows = [[name, *[num(get_path(entry, *path)) for _, path in columns]] for name, entry in report["models"].items()]
    rows += [[f"Δ {name} − retain", *[num(get_path(gap, *path), True) if path[0] != "forget_quality" else ""
                                     for _, path in columns]]
             for name, gap in report.get("gaps_to_retain", {}).items() if "@" not in name]
    table = text_table(["model", *[title for title, _ in columns]], rows)
    semeval = format_semeval(report)
    return table + ("\n\nSemEval-2025 Task 4\n" + semeval if semeval else "")


def criterion_cells(c: dict[str, Any]) -> list[str]:
    """Value with its 90% interval, tolerance, verdict, power and direction of one criterion, as table cells."""
    def short(x: Any) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "n/a"
        return f"{x:.3g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}" if abs(x) < 100 else f"{x:.1f}"

    ci = c.get("ci90") or [math.nan, math.nan]
    interval = "" if any(isinstance(x, float) and math.isnan(x) for x in ci) else f" [{short(ci[0])}, {short(ci[1])}]"
    tol = c.get("tolerance")
    tolerance = f"{c['comparison']} {tol:g}" if isinstance(tol, (int, float)) and not math.isnan(tol) else "–"
    power = c.get("power", {})
    power_cell = power.get("label", "n/a")
    if power.get("has_power") is not None:
        power_cell += f" (original {short(power.get('original_value'))}, {power.get('original_verdict', NA).upper()})"
    verdict = c["verdict"].upper() if c.get("counted", True) else f"{c['verdict'].upper()} (not counted)"
    return [f"{short(c['value'])}{interval}", tolerance, verdict, power_cell, c.get("direction_text", NA)]


def format_lm_criteria(checks: list[dict[str, Any]]) -> str:
    """One line per criterion: value [90% interval], tolerance, PASS / INCONCLUSIVE / FAIL / n/a, power on the
    original model and the signed direction."""
    rows = [[c["criterion"], *criterion_cells(c)] for c in checks]
    table = text_table(["criterion", "value [90% CI]", "tolerance", "verdict", "power (original)", "direction"], rows)
    return table + "\n" + lm_verdict(checks)["summary"]


def format_semeval(report: dict[str, Any]) -> str:
    """The SemEval-2025 Task 4 scores per model (empty when not computed)."""
    block = report.get("semeval") or {}
    if not block.get("models"):
        return ""
    rows = []
    for name, m in block["models"].items():
        f, r = (m["means"][p][block["task"]] for p in ("forget", "retain"))
        ci = m.get("final_ci95") or [math.nan, math.nan]
        rows.append([name, num(f["regurgitation"]), num(f["knowledge"]), num(r["regurgitation"]),
                     num(r["knowledge"]), num(m["task_aggregate"]), num(m["mia_auc"]), num(m["mia_score"]),
                     num(m["utility"]), num(m["final"]) + ("" if any(math.isnan(x) for x in ci)
                                                              else f" [{ci[0]:.3f}, {ci[1]:.3f}]")])
    return text_table(["model", "forget regurg.", "forget knowl.", "retain regurg.", "retain knowl.", "task aggregate",
                   "loss AUC", "MIA score", "utility*", "final [95% CI]"], rows) + "\n* " + block["note"]
