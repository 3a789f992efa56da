"""The human-readable audit: ``audit.md`` and a self-contained ``audit.html`` (tables + matplotlib PNGs).

Both are rendered from one list of blocks (headings, paragraphs, tables, images, code), so they always say the same.
PNGs are written to ``plots/`` (linked from the Markdown) and embedded base64 in the HTML, which opens on its own.
Nothing here reads patient data: the inputs are the audit dictionary and per-sample attack scores.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medforget.evaluation.audit import MODEL_NAMES, REFERENCE, _json_safe, atomic_write_text
from medforget.evaluation.criteria import RunArtifacts
from medforget.evaluation.mia.base import roc

COLORS = {"original": "#d62728", "unlearned": "#1f77b4", "retrained": "#2ca02c"}
Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("table", header, rows) | ("img", file, caption) | ("code", text)


# --- formatting ----------------------------------------------------------------------------------------------------
def _num(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def criterion_value(value: Any, tolerance: float) -> str:
    """A criterion's value to 3 decimals, or to 5 where 3 would print it equal to the tolerance it fails or passes
    by less than the rounding (e.g. 0.89951 against ``>= 0.9``)."""
    text = _num(value)
    if text != "n/a" and value != tolerance and float(text) == round(tolerance, 3):
        return f"{value:.5f}"
    return text


def cell(node: Any, signed: bool = False) -> str:
    """``mean ± std`` of an aggregate leaf (just the mean for one run)."""
    if not isinstance(node, dict) or "mean" not in node:
        return "n/a"
    text = _num(node["mean"], signed)
    if node.get("n", 0) > 1 and text != "n/a":
        text += f" ± {node['std']:.3f}"
    return text


def _interval(values: Any) -> str:
    if not isinstance(values, list) or len(values) != 2 or any(v is None for v in values):
        return "n/a"
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def _get(tree: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


# --- plots ---------------------------------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, width: float = 3.2, height: float = 2.8):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_roc_panels(panels: dict[str, list[tuple[str, Any, Any, dict[str, Any]]]], path: Path, ncols: int,
                    nonmembers: str, legend_size: int = 7) -> Path | None:
    """One ROC panel per attack: ``{title: [(label, member_scores, nonmember_scores, line style), ...]}``, with the
    chance diagonal; the x axis names the non-member set."""
    if not panels:
        return None
    ncols = min(ncols, len(panels))
    plt, fig, axes = _figure(math.ceil(len(panels) / ncols), ncols)
    for ax, (title, curves) in zip(axes.flat, panels.items(), strict=False):
        for label, members, others, style in curves:
            fpr, tpr = roc(members, others)
            ax.plot(fpr, tpr, label=label, **style)
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(title=title, xlabel=f"FPR ({nonmembers})", ylabel="TPR (forget)", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=legend_size, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    return _save(plt, fig, path)


def plot_roc(artifacts: RunArtifacts, path: Path) -> Path | None:
    """ROC curve of every attack (forget = members vs test = non-members), one panel per attack, one line per model."""
    models = [m for m in MODEL_NAMES if m in artifacts.scores] + [m for m in artifacts.scores if m not in MODEL_NAMES]
    attacks = sorted({a for m in models for a in artifacts.scores[m]})
    panels = {attack.removesuffix("Attack"): [
        (model, scores["forget"], scores["test"], {"color": COLORS.get(model), "lw": 1.5})
        for model in models if (scores := artifacts.scores[model].get(attack)) is not None] for attack in attacks}
    return plot_roc_panels(panels, path, ncols=4, nonmembers="test")


def plot_histograms(artifacts: RunArtifacts, path: Path) -> Path | None:
    """Score histograms of forget vs test samples, one row per attack, one column per model."""
    models = [m for m in MODEL_NAMES if m in artifacts.scores]
    attacks = sorted({a for m in models for a in artifacts.scores[m]})
    if not attacks or not models:
        return None
    plt, fig, axes = _figure(len(attacks), len(models), 3.0, 2.0)
    for i, attack in enumerate(attacks):
        for j, model in enumerate(models):
            ax = axes[i, j]
            scores = artifacts.scores[model].get(attack)
            if scores is None:
                ax.axis("off")
                continue
            both = np.concatenate([scores["forget"], scores["test"]])
            both = both[np.isfinite(both)]
            lo, hi = (np.percentile(both, 1), np.percentile(both, 99)) if len(both) else (0.0, 1.0)
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 25)
            for part, color in (("test", "grey"), ("forget", COLORS.get(model, "C0"))):
                values = np.clip(scores[part], bins[0], bins[-1])
                ax.hist(values, bins=bins, density=True, alpha=0.55, color=color, label=part)
            ax.set_title(f"{attack.removesuffix('Attack')} · {model}", fontsize=8)
            ax.tick_params(labelsize=6)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
    return _save(plt, fig, path)


def plot_relearning(summary: dict, path: Path) -> Path | None:
    """Held-out forget accuracy during the relearning attack, per model."""
    curves = {m: _get(summary, "models", m, "relearning") for m in MODEL_NAMES}
    curves = {m: c for m, c in curves.items() if c and isinstance(c.get("step"), list)}
    if not curves:
        return None
    plt, fig, axes = _figure(1, 1, 4.5, 3.2)
    ax = axes[0, 0]
    for model, curve in curves.items():
        ax.plot(curve["step"], curve["accuracy"], marker="o", color=COLORS.get(model), label=model)
    ax.set(xlabel="fine-tuning steps on part of the forget set", ylabel="accuracy, other forget patients",
           ylim=(0, 1.02), title="relearning attack")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_quantization(summary: dict, path: Path) -> Path | None:
    """Forget accuracy of each model in full precision and after each quantization scheme."""
    models = [m for m in MODEL_NAMES if _get(summary, "models", m, "quantization")]
    if not models:
        return None
    schemes = list(_get(summary, "models", models[0], "quantization"))
    variants = ["float", *schemes]
    plt, fig, axes = _figure(1, 1, 4.8, 3.2)
    ax = axes[0, 0]
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        values = []
        for m in models:
            node = (_get(summary, "models", m, "metrics", "forget", "fused", "accuracy") if variant == "float"
                    else _get(summary, "models", m, "quantization", variant, "metrics", "forget", "accuracy"))
            values.append(node["mean"] if node else float("nan"))
        ax.bar(np.arange(len(models)) + k * width, values, width, label=variant)
    ax.set_xticks(np.arange(len(models)) + width * (len(variants) - 1) / 2, models)
    ax.set(ylabel="forget accuracy", ylim=(0, 1.05), title="quantization recovery")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_utility(summary: dict, path: Path) -> Path | None:
    """Fused-head AUC on forget / retain / test per model (error bars: std over runs)."""
    models = [m for m in MODEL_NAMES if _get(summary, "models", m, "metrics")]
    parts = [p for p in ("forget", "retain", "test") if _get(summary, "models", models[0], "metrics", p)] if models \
        else []
    if not parts:
        return None
    plt, fig, axes = _figure(1, 1, 4.8, 3.2)
    ax = axes[0, 0]
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        nodes = [_get(summary, "models", m, "metrics", p, "fused", "auc") or {} for p in parts]
        ax.bar(np.arange(len(parts)) + k * width, [n.get("mean", np.nan) for n in nodes], width,
               yerr=[n.get("std", 0.0) for n in nodes], color=COLORS.get(m), label=m, capsize=2)
    ax.set_xticks(np.arange(len(parts)) + width * (len(models) - 1) / 2, parts)
    ax.set(ylabel="macro AUC (fused head)", ylim=(0, 1.05), title="utility")
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


# --- content -------------------------------------------------------------------------------------------------------
def blocks(report: dict[str, Any], images: dict[str, str]) -> list[Block]:
    """The report as a list of blocks (shared by Markdown and HTML)."""
    summary = report["summary"]
    models = [m for m in MODEL_NAMES if m in summary.get("models", {})]
    n_runs = len(report["runs"])
    out: list[Block] = [("h1", "medforget audit: are the forget patients really gone?")]
    verdict = {"pass": "PASS: every counted criterion is shown to lie within its tolerance (90% interval inside)",
               "fail": "FAIL: at least one criterion is shown to lie outside its tolerance (95% interval outside)",
               "inconclusive": "INCONCLUSIVE: this request cannot tell; no criterion is shown outside its tolerance, "
                               "but not all are shown inside (see each criterion for what would decide it)",
               "n/a": "no verdict (the audit needs an unlearned and a retrained model, and intervals)"}[
        report["verdict"]]
    out.append(("p", f"**Verdict: {verdict}.**"))
    detail = report.get("verdict_detail") or {}
    if detail:
        counts = detail.get("counts", {})
        text = (f"{detail['counted']} of {detail['criteria']} criteria counted: {counts.get('pass', 0)} pass, "
                f"{counts.get('inconclusive', 0)} inconclusive, {counts.get('fail', 0)} fail.")
        if detail.get("no_power"):
            text += (f" Not counted, because the original model is not shown to differ from the retrained one on "
                     f"them (no power on this model): {', '.join(detail['no_power'])}.")
        out.append(("p", text))
    code = report["code"]
    request = report["forget_request"]
    out.append(("list", [
        f"created {report['created']}; medforget {code['medforget']}, commit {code.get('git_commit') or 'unknown'}"
        + (" (modified tree)" if code.get("git_dirty") else ""),
        f"manifest SHA-256 `{report['data']['manifest_sha256']}`",
        f"forget request: {', '.join(map(str, request['patients']))} patients, recorded only as salted hashes "
        f"({request['hash']}; the salt is kept apart from this report)",
        f"{n_runs} run(s) (seeds); models: {', '.join(models)}; values are mean ± std over runs"
        if n_runs > 1 else f"1 run; models: {', '.join(models)}",
        "parts: " + ", ".join(f"{k} {v['patients']} patients / {v['studies']} studies"
                              for k, v in report["data"]["parts"].items() if k != "retain_sample"),
        _sampling_line(report["data"].get("sampling")),
    ]))

    if report["criteria"]:
        out.append(("h2", "Criteria (unlearned vs retrained)"))
        rows = []
        for c in report["criteria"]:
            tol = f"± {c['tolerance']:g}" if c.get("sided") == "two-sided" else f"≤ {c['tolerance']:g}"
            power = c.get("power")
            power_cell = "" if power is None else (
                _num(power["estimate"], True) + ("" if c.get("has_power") else " (no power)"))
            floor = c.get("noise_floor")
            result = c["verdict"].upper() + ("" if c.get("counted") else " (not counted)")
            rows.append([c["criterion"], c["description"], _num(c["estimate"], True), c.get("direction") or "",
                         _interval(c.get("ci90")), _interval(c.get("ci95")), tol, "" if floor is None else _num(floor),
                         power_cell, result])
        out.append(("table", ["criterion", "what", "gap", "direction", "90% interval", "95% interval", "tolerance",
                              "noise floor", "original", "result"], rows))
        cfg = report["config"]["audit"]
        out.append(("p", f"Intervals: paired patient bootstrap ({cfg['bootstrap']} resamples; several runs are "
                         "resampled too). PASS: the 90% interval lies inside the tolerance (equivalence, two one-sided "
                         "tests at α = 0.05). FAIL: the 95% interval lies wholly outside. INCONCLUSIVE otherwise. "
                         "*original*: the same gap with the original model in the unlearned model's place; a "
                         "criterion the original is not shown to fail has no power on this model and is not counted. "
                         "*noise floor*: the gap between retrained models of different seeds (several runs only)."))
        reasons = [[c["criterion"], c["reason"]] for c in report["criteria"] if c["verdict"] == "inconclusive"]
        if reasons:
            out.append(("table", ["inconclusive criterion", "what would decide it"], reasons))
    certificate = [(i, run) for i, run in enumerate(report.get("per_patient") or []) if run]
    if certificate:
        out.append(("h2", "Per-patient forgetting test"))
        out.append(("p", "For each forget patient, the offline LiRA statistic of its studies (the model's confidence "
                         "standardised by reference models that never saw it), averaged over the patient, is ranked "
                         "among the same statistic of never-seen val and test patients: a small p-value means the "
                         "model still treats the patient like a member. For a retrained model the p-values are "
                         "uniform; the original model shows the test's power. Combined: a permutation test of the "
                         "request's mean statistic. Patients are listed by salted hash only."))
        for i, run in certificate:
            rows = [[m, f"{sum(r['passed'] for r in res['patients'])} / {res['forget_patients']}",
                     _num(res["combined_p"]), str(res["null_patients"])] for m, res in run.items()]
            out.append(("table", [f"model (run {i + 1})", "patients with p ≥ α", "combined p", "never-seen patients"],
                        rows))
            if "unlearned" in run:
                out.append(("table", ["patient (salted hash)", "studies", "statistic", "p-value", "result"],
                            [[r["patient"], str(r["studies"]), _num(r["statistic"], True), _num(r["p_value"]),
                              "pass" if r["passed"] else "member-like"] for r in run["unlearned"]["patients"]]))

    out.append(("h2", "Utility"))
    heads = sorted({h for m in models for p in _get(summary, "models", m, "metrics").values() for h in p},
                   key=lambda h: (h != "fused", h))
    parts = [p for p in ("forget", "retain", "test", "val") if _get(summary, "models", models[0], "metrics", p)] \
        if models else []
    for head in heads:
        header = ["model", *[f"{p} {m}" for p in parts for m in ("AUC", "F1", "acc")]]
        rows = []
        for m in models:
            rows.append([m, *[cell(_get(summary, "models", m, "metrics", p, head, k))
                              for p in parts for k in ("auc", "f1", "accuracy")]])
        for m in models:
            if m != REFERENCE and _get(summary, "gaps_to_retrained", m):
                rows.append([f"Δ {m} − retrained", *[cell(_get(summary, "gaps_to_retrained", m, "metrics", p, head, k),
                                                          True) for p in parts for k in ("auc", "f1", "accuracy")]])
        out.append(("h3", f"{head} head"))
        out.append(("table", header, rows))
    if "utility" in images:
        out.append(("img", images["utility"], "Fused-head AUC per part."))

    attacks = sorted({a for m in models for a in (_get(summary, "models", m, "mia") or {})})
    if attacks:
        out.append(("h2", "Membership inference (forget = members vs test = non-members)"))
        out.append(("p", "Higher score = more member-like. AUC 0.5 means the attack cannot tell the forget patients "
                         "from patients the model never saw; the retrained model is the target. AUC per study and per "
                         "patient (a patient's score: the mean of its studies'; the verdict uses the patient AUC). "
                         "TPR at an FPR is n/a below 10 / FPR non-member patients. Member rate: share of forget "
                         "samples the attack calls members, with its threshold calibrated on retain vs val."))
        header = ["attack", *[f"AUC {m}" for m in models], "Δ AUC unl − ret", "Δ 95% interval",
                  *[f"patient AUC {m}" for m in models], "Δ patient AUC", "Δ patient 95% interval",
                  *[f"TPR@1%FPR {m}" for m in models],
                  *[f"TPR@0.1%FPR {m}" for m in models], *[f"member rate {m}" for m in models]]
        rows = []
        for a in attacks:
            rows.append([a, *[cell(_get(summary, "models", m, "mia", a, "auc")) for m in models],
                         cell(_get(summary, "gaps_to_retrained", "unlearned", "mia", a, "auc"), True),
                         _interval(_get(report["runs"][0], "gaps_to_retrained", "unlearned", "mia", a, "auc_ci95")),
                         *[cell(_get(summary, "models", m, "mia", a, "patient_auc")) for m in models],
                         cell(_get(summary, "gaps_to_retrained", "unlearned", "mia", a, "patient_auc"), True),
                         _interval(_get(report["runs"][0], "gaps_to_retrained", "unlearned", "mia", a,
                                        "patient_auc_ci95")),
                         *[cell(_get(summary, "models", m, "mia", a, "tpr@1%fpr")) for m in models],
                         *[cell(_get(summary, "models", m, "mia", a, "tpr@0.1%fpr")) for m in models],
                         *[cell(_get(summary, "models", m, "mia", a, "member_rate")) for m in models]])
        out.append(("table", header, rows))
        for key, caption in (("roc", "ROC curves of every attack (run 1)."),
                             ("histograms", "Score histograms: forget (colour) vs test (grey) (run 1).")):
            if key in images:
                out.append(("img", images[key], caption))

    quant = [m for m in models if _get(summary, "models", m, "quantization")]
    relearn = [m for m in models if _get(summary, "models", m, "relearning")]
    if quant or relearn:
        out.append(("h2", "Robustness of forgetting"))
    if quant:
        out.append(("h3", "Quantization recovery"))
        out.append(("p", "The model's weights are quantized (int8: dynamic int8 Linear layers and int8 convolutions; "
                         "int4: 4-bit round-to-nearest of every Linear and convolution weight) and the forget set is "
                         "measured again. Recovered = share of the forgotten forget accuracy that comes back "
                         "(0 = none, 1 = back at the original)."))
        rows = []
        for m in quant:
            for scheme, q in _get(summary, "models", m, "quantization").items():
                rows.append([m, scheme, cell(_get(q, "metrics", "forget", "accuracy")),
                             cell(_get(q, "metrics", "forget", "auc")), cell(_get(q, "metrics", "test", "auc")),
                             cell(_get(q, "loss_mia_auc")), cell(_get(q, "recovered_fraction", "forget_accuracy"))])
        out.append(("table", ["model", "scheme", "forget acc", "forget AUC", "test AUC", "loss-MIA AUC",
                              "recovered (forget acc)"], rows))
        if "quantization" in images:
            out.append(("img", images["quantization"], "Forget accuracy in full precision and quantized."))
    if relearn:
        out.append(("h3", "Relearning attack"))
        first = _get(summary, "models", relearn[0], "relearning")
        cfg = report["config"]["audit"]
        out.append(("p", f"Each model is fine-tuned for {cfg['relearn_steps']} steps (AdamW, lr {cfg['relearn_lr']:g}) "
                         f"on {cell(first.get('attack_patients'))} forget patient(s); accuracy is measured on the "
                         f"other {cell(first.get('eval_patients'))}. A model that only hid the patients relearns "
                         "them faster than the retrained model."))
        steps = first["step"]
        rows = [[str(int(s)), *[_num(_get(summary, "models", m, "relearning")["accuracy"][i]) for m in relearn]]
                for i, s in enumerate(steps)]
        out.append(("table", ["step", *[f"forget acc {m}" for m in relearn]], rows))
        if "relearning" in images:
            out.append(("img", images["relearning"], "Relearning curves."))

    timing = report.get("timing") or {}
    if timing:
        out.append(("h2", "Time"))
        out.append(("table", ["unlearning (s)", "retraining (s)", "original training (s)", "unlearning / retraining"],
                    [[cell(timing.get("unlearn_seconds")), cell(timing.get("retrain_seconds")),
                      cell(timing.get("original_train_seconds")), cell(timing.get("ratio"))]]))

    out.append(("h2", "Configuration"))
    out.append(("code", json.dumps(_json_safe(report["config"]), indent=2)))
    out.append(("h2", "Forget request (salted hashes)"))
    hashes = request["salted_hashes"]
    flat = hashes if hashes and isinstance(hashes[0], str) else [h for group in hashes for h in group]
    out.append(("code", "\n".join(flat)))
    return out


def to_markdown(items: list[Block]) -> str:
    lines: list[str] = []
    for item in items:
        kind = item[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + item[1], ""]
        elif kind == "p":
            lines += [item[1], ""]
        elif kind == "list":
            lines += [f"- {x}" for x in item[1]] + [""]
        elif kind == "table":
            header, rows = item[1], item[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{item[2]}]({item[1]})", "", f"*{item[2]}*", ""]
        elif kind == "code":
            lines += ["```", item[1], "```", ""]
    return "\n".join(lines)


def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def _inline_md(text: str) -> str:
    """``**bold**`` and backticks of our own paragraphs, after escaping."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(items: list[Block], root: Path, title: str = "medforget audit") -> str:
    body: list[str] = []
    for item in items:
        kind = item[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(item[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_md(item[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_md(x)}</li>" for x in item[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in item[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                           for row in item[2])
            cls = ' class="criteria"' if item[1] and item[1][-1] == "result" else ""
            body.append(f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((root / item[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(item[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(item[2])}</figcaption></figure>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(item[1])}</pre>")
    style = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;
padding:.7em;overflow-x:auto;font-size:12px}img{max-width:100%}figcaption{font-size:12px;color:#555}"""
    html_text = "\n".join(body)
    html_text = html_text.replace("<td>PASS</td>", '<td style="color:#1a7f37;font-weight:bold">PASS</td>')
    html_text = html_text.replace("<td>FAIL</td>", '<td style="color:#c62828;font-weight:bold">FAIL</td>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n{html_text}\n</body></html>\n")


def write_report(report: dict[str, Any], artifacts: RunArtifacts, out: str | Path, plots: bool = True) -> dict:
    """Write ``plots/*.png``, ``audit.md`` and ``audit.html`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, str] = {}
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        summary = report["summary"]
        for key, fn, arg in (("utility", plot_utility, summary), ("roc", plot_roc, artifacts),
                             ("histograms", plot_histograms, artifacts), ("quantization", plot_quantization, summary),
                             ("relearning", plot_relearning, summary)):
            path = fn(arg, out / "plots" / f"{key}.png")
            if path is not None:
                images[key] = f"plots/{key}.png"
    items = blocks(report, images)
    atomic_write_text(out / "audit.md", to_markdown(items))
    atomic_write_text(out / "audit.html", to_html(items, out))
    return {"markdown": out / "audit.md", "html": out / "audit.html", "plots": images}


def _sampling_line(sampling: dict[str, Any] | None) -> str:
    """What the audit scored of each part: a bounded seeded sample (``--data.bounded``) or everything."""
    if not sampling:
        return "scored: every study of each part"
    if not sampling.get("bounded"):
        return "scored: every study of each part (--data.bounded false)"
    shown = [f"{name} {v['patients']} of {v['of_patients']} patients"
             for name, v in sampling["parts"].items() if name in ("retain", "val", "test")]
    return (f"scored: seeded samples of at most {sampling.get('max_eval_patients')} patients per part ("
            + ", ".join(shown) + "); --data.bounded false scores every study")
