"""The classifier audit on the console: plain-text tables of metrics, attacks, criteria, the verdict and the
per-patient test (``table.txt`` of ``medforget evaluate``)."""

from __future__ import annotations

from typing import Any

from medforget.audit.render import interval_text, num, text_table

COLUMNS = (
    ("forget", "auc"), ("forget", "f1"), ("forget", "accuracy"),
    ("retain", "auc"), ("retain", "accuracy"),
    ("test", "auc"), ("test", "f1"), ("test", "accuracy"),
)


def means(summary: dict) -> dict:
    """An :func:`aggregate` summary with every ``{"mean", "std", "n"}`` leaf replaced by its mean."""
    if isinstance(summary, dict):
        if set(summary) == {"mean", "std", "n"}:
            return summary["mean"]
        return {k: means(v) for k, v in summary.items()}
    return summary


def format_table(report: dict[str, Any], head: str = "fused", attack: str = "LossAttack") -> str:
    """A plain-text table of one head's metrics and an attack's AUC, with gaps to the retrained model. ``report`` is
    one run (:func:`~medforget.audit.classifier.measure.evaluate_models`) or ``means(summary)``."""
    titles = [f"{part} {metric[:3].upper() if metric != 'accuracy' else 'acc'}" for part, metric in COLUMNS]
    rows = []
    for name, res in report["models"].items():
        cells = [num(res["metrics"].get(part, {}).get(head, {}).get(metric, float("nan"))) for part, metric in COLUMNS]
        cells.append(num(res.get("mia", {}).get(attack, {}).get("auc", float("nan"))))
        rows.append([name, *cells])
    for name, gaps in report.get("gaps_to_retrained", {}).items():
        cells = [num(gaps["metrics"].get(part, {}).get(head, {}).get(metric, float("nan")), True)
                 for part, metric in COLUMNS]
        cells.append(num(gaps.get("mia", {}).get(attack, {}).get("auc", float("nan")), True))
        rows.append([f"Δ {name} vs retrained", *cells])
    return text_table(["model", *titles, "MIA AUC"], rows)


def format_heads(report: dict[str, Any], part: str = "test", metric: str = "auc") -> str:
    """Per-head (fused / image / text) ``metric`` on ``part`` for every model."""
    lines = [f"{part} {metric.upper()} by head"]
    for name, res in report["models"].items():
        heads = res["metrics"].get(part, {})
        lines.append(f"  {name:<10} " + "  ".join(f"{h} {v[metric]:.3f}" for h, v in heads.items()))
    return "\n".join(lines)


def format_attacks(report: dict[str, Any]) -> str:
    """Attack AUC (forget vs test) of every model, per attack."""
    models = list(report["models"])
    attacks = sorted({a for res in report["models"].values() for a in res.get("mia", {})})
    rows = [[a, *[num(report["models"][m]["mia"].get(a, {}).get("auc")) for m in models]] for a in attacks]
    return text_table(["attack AUC (forget vs test)", *models], rows)


def format_criteria(checks: list[dict[str, Any]]) -> str:
    """One line per criterion: the signed gap with its 90% and 95% intervals, the tolerance, the noise floor, the
    original's gap (power) and the verdict; the reasons of INCONCLUSIVE results below."""
    rows = []
    for c in checks:
        tol = f"±{c['tolerance']:.3f}" if c.get("sided") == "two-sided" else f"<= {c['tolerance']:.3f}"
        power = c.get("power")
        power_cell = "" if power is None else (num(power["estimate"], True) + ("" if c.get("has_power")
                                                                                else " no power"))
        floor = c.get("noise_floor")
        result = c["verdict"].upper() + ("" if c.get("counted") else " (not counted)")
        rows.append([c["criterion"], num(c["estimate"], True), c.get("direction") or "",
                     *[interval_text(c.get(k), nan_missing=True) for k in ("ci90", "ci95")], tol,
                     "" if floor is None else f"{floor:.3f}", power_cell, result])
    table = text_table(["criterion", "gap", "direction", "90% interval", "95% interval", "tolerance", "noise floor",
                        "original", "verdict"], rows)
    notes = [f"  {c['criterion']}: {c['reason']}" for c in checks if c["verdict"] == "inconclusive"]
    return table + ("\n" + "\n".join(notes) if notes else "")


def format_verdict(report: dict[str, Any]) -> str:
    """The overall verdict and what it rests on."""
    d = report.get("verdict_detail", {})
    if not d:
        return f"verdict: {report['verdict'].upper()}"
    counts = d.get("counts", {})
    line = (f"verdict: {report['verdict'].upper()} ({d['counted']} of {d['criteria']} criteria counted: "
            f"{counts.get('pass', 0)} pass, {counts.get('inconclusive', 0)} inconclusive, {counts.get('fail', 0)} fail")
    if d.get("no_power"):
        line += f"; no power on this model: {', '.join(d['no_power'])}"
    return line + ")"


def format_per_patient(report: dict[str, Any]) -> str:
    """The per-patient forgetting test of every model (the unlearned model's patients listed by salted hash)."""
    lines = []
    for i, run in enumerate(report.get("per_patient", [])):
        if not run:
            continue
        head = "per-patient forgetting test" + (f" (run {i + 1})" if len(report["per_patient"]) > 1 else "")
        lines.append(f"{head}: p-value of each forget patient against {next(iter(run.values()))['null_patients']} "
                     f"never-seen patients (offline LiRA statistic)")
        for name, res in run.items():
            passed = sum(r["passed"] for r in res["patients"])
            lines.append(f"  {name:<10} {passed}/{res['forget_patients']} patients with p >= {res['alpha']:g}; "
                         f"combined p = {res['combined_p']:.4f}")
        if "unlearned" in run:
            rows = [[r["patient"], str(r["studies"]), f"{r['statistic']:+.2f}", f"{r['p_value']:.3f}",
                     "pass" if r["passed"] else "MEMBER-LIKE"] for r in run["unlearned"]["patients"]]
            lines.append(text_table(["patient (salted hash)", "studies", "statistic", "p-value", "result"], rows))
    return "\n".join(lines)
