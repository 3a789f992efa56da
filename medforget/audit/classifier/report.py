"""The human-readable audit: ``audit.md`` and a self-contained ``audit.html`` (tables + matplotlib PNGs).

Both are rendered from one list of blocks (headings, paragraphs, tables, images, code), so they always say the same.
PNGs are written to ``plots/`` (linked from the Markdown) and embedded base64 in the HTML, which opens on its own.
Nothing here reads patient data: the inputs are the audit dictionary and per-sample attack scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medforget.audit.classifier.config import MODEL_NAMES, REFERENCE
from medforget.audit.classifier.criteria import RunArtifacts
from medforget.audit.render import (
    COLORS,
    Block,
    cell,
    closing_blocks,
    figure,
    get_path,
    interval_text,
    num,
    plot_roc_panels,
    provenance_line,
    save_figure,
    write_documents,
)

# --- plots ---------------------------------------------------------------------------------------------------------


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
    plt, fig, axes = figure(len(attacks), len(models), 3.0, 2.0)
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
    return save_figure(plt, fig, path)


def plot_relearning(summary: dict, path: Path) -> Path | None:
    """Held-out forget accuracy during the relearning attack, per model."""
    curves = {m: get_path(summary, "models", m, "relearning") for m in MODEL_NAMES}
    curves = {m: c for m, c in curves.items() if c and isinstance(c.get("step"), list)}
    if not curves:
        return None
    plt, fig, axes = figure(1, 1, 4.5, 3.2)
    ax = axes[0, 0]
    for model, curve in curves.items():
        ax.plot(curve["step"], curve["accuracy"], marker="o", color=COLORS.get(model), label=model)
    ax.set(xlabel="fine-tuning steps on part of the forget set", ylabel="accuracy, other forget patients",
           ylim=(0, 1.02), title="relearning attack")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_quantization(summary: dict, path: Path) -> Path | None:
    """Forget accuracy of each model in full precision and after each quantization scheme."""
    models = [m for m in MODEL_NAMES if get_path(summary, "models", m, "quantization")]
    if not models:
        return None
    schemes = list(get_path(summary, "models", models[0], "quantization"))
    variants = ["float", *schemes]
    plt, fig, axes = figure(1, 1, 4.8, 3.2)
    ax = axes[0, 0]
    width = 0.8 / len(variants)
    for k, variant in enumerate(variants):
        values = []
        for m in models:
            node = (get_path(summary, "models", m, "metrics", "forget", "fused", "accuracy") if variant == "float"
                    else get_path(summary, "models", m, "quantization", variant, "metrics", "forget", "accuracy"))
            values.append(node["mean"] if node else float("nan"))
        ax.bar(np.arange(len(models)) + k * width, values, width, label=variant)
    ax.set_xticks(np.arange(len(models)) + width * (len(variants) - 1) / 2, models)
    ax.set(ylabel="forget accuracy", ylim=(0, 1.05), title="quantization recovery")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_utility(summary: dict, path: Path) -> Path | None:
    """Fused-head AUC on forget / retain / test per model (error bars: std over runs)."""
    models = [m for m in MODEL_NAMES if get_path(summary, "models", m, "metrics")]
    parts = [p for p in ("forget", "retain", "test")
             if get_path(summary, "models", models[0], "metrics", p)] if models else []
    if not parts:
        return None
    plt, fig, axes = figure(1, 1, 4.8, 3.2)
    ax = axes[0, 0]
    width = 0.8 / len(models)
    for k, m in enumerate(models):
        nodes = [get_path(summary, "models", m, "metrics", p, "fused", "auc") or {} for p in parts]
        ax.bar(np.arange(len(parts)) + k * width, [n.get("mean", np.nan) for n in nodes], width,
               yerr=[n.get("std", 0.0) for n in nodes], color=COLORS.get(m), label=m, capsize=2)
    ax.set_xticks(np.arange(len(parts)) + width * (len(models) - 1) / 2, parts)
    ax.set(ylabel="macro AUC (fused head)", ylim=(0, 1.05), title="utility")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


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
    request = report["forget_request"]
    out.append(("list", [
        provenance_line(report),
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
                num(power["estimate"], True) + ("" if c.get("has_power") else " (no power)"))
            floor = c.get("noise_floor")
            result = c["verdict"].upper() + ("" if c.get("counted") else " (not counted)")
            rows.append([c["criterion"], c["description"], num(c["estimate"], True), c.get("direction") or "",
                         interval_text(c.get("ci90")), interval_text(c.get("ci95")), tol,
                         "" if floor is None else num(floor), power_cell, result])
        out.append(("table", ["criterion", "what", "gap", "direction", "90% interval", "95% interval", "tolerance",
                              "noise floor", "original", "result"], rows))
        cfg = report["config"]["audit"]
        out.append(("p", f"Intervals: paired patient bootstrap ({cfg['bootstrap']} resamples; several runs are "
                         "resampled too). PASS: the 90% interval lies inside the tolerance (equivalence, two one-sided "
                         "tests at α = 0.05). FAIL: the 95% interval lies wholly outside. INCONCLUSIVE otherwise. "
                         "*original*: the same gap with the original model in the unlearned model's place; a "
                         "criterion the original is not shown to fail has no power on this model and is not counted. "
                         "*noise floor*: the gap between retrained models of different seeds (several runs only); "
                         "a gap within it is not a difference, so FAIL needs the 95% interval beyond the larger of "
                         "the tolerance and the floor. With one run the intervals hold the patients' noise only, not "
                         "the retrained model's seed noise. A criterion resting on one forget patient is "
                         "INCONCLUSIVE: a patient bootstrap cannot resample one patient."))
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
                     num(res["combined_p"]), str(res["null_patients"])] for m, res in run.items()]
            out.append(("table", [f"model (run {i + 1})", "patients with p ≥ α", "combined p", "never-seen patients"],
                        rows))
            if "unlearned" in run:
                out.append(("table", ["patient (salted hash)", "studies", "statistic", "p-value", "result"],
                            [[r["patient"], str(r["studies"]), num(r["statistic"], True), num(r["p_value"]),
                              "pass" if r["passed"] else "member-like"] for r in run["unlearned"]["patients"]]))

    out.append(("h2", "Utility"))
    heads = sorted({h for m in models for p in get_path(summary, "models", m, "metrics").values() for h in p},
                   key=lambda h: (h != "fused", h))
    parts = [p for p in ("forget", "retain", "test", "val") if get_path(summary, "models", models[0], "metrics", p)] \
        if models else []
    for head in heads:
        header = ["model", *[f"{p} {m}" for p in parts for m in ("AUC", "F1", "acc")]]
        rows = []
        for m in models:
            rows.append([m, *[cell(get_path(summary, "models", m, "metrics", p, head, k))
                              for p in parts for k in ("auc", "f1", "accuracy")]])
        for m in models:
            if m != REFERENCE and get_path(summary, "gaps_to_retrained", m):
                gaps = get_path(summary, "gaps_to_retrained", m, "metrics")
                rows.append([f"Δ {m} − retrained", *[cell(get_path(gaps, p, head, k), True)
                                                      for p in parts for k in ("auc", "f1", "accuracy")]])
        out.append(("h3", f"{head} head"))
        out.append(("table", header, rows))
    if "utility" in images:
        out.append(("img", images["utility"], "Fused-head AUC per part."))

    attacks = sorted({a for m in models for a in (get_path(summary, "models", m, "mia") or {})})
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
        first_gaps = get_path(report["runs"][0], "gaps_to_retrained", "unlearned", "mia")
        for a in attacks:
            rows.append([a, *[cell(get_path(summary, "models", m, "mia", a, "auc")) for m in models],
                         cell(get_path(summary, "gaps_to_retrained", "unlearned", "mia", a, "auc"), True),
                         interval_text(get_path(first_gaps, a, "auc_ci95")),
                         *[cell(get_path(summary, "models", m, "mia", a, "patient_auc")) for m in models],
                         cell(get_path(summary, "gaps_to_retrained", "unlearned", "mia", a, "patient_auc"), True),
                         interval_text(get_path(first_gaps, a, "patient_auc_ci95")),
                         *[cell(get_path(summary, "models", m, "mia", a, "tpr@1%fpr")) for m in models],
                         *[cell(get_path(summary, "models", m, "mia", a, "tpr@0.1%fpr")) for m in models],
                         *[cell(get_path(summary, "models", m, "mia", a, "member_rate")) for m in models]])
        out.append(("table", header, rows))
        for key, caption in (("roc", "ROC curves of every attack (run 1)."),
                             ("histograms", "Score histograms: forget (colour) vs test (grey) (run 1).")):
            if key in images:
                out.append(("img", images[key], caption))

    quant = [m for m in models if get_path(summary, "models", m, "quantization")]
    relearn = [m for m in models if get_path(summary, "models", m, "relearning")]
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
            for scheme, q in get_path(summary, "models", m, "quantization").items():
                rows.append([m, scheme, cell(get_path(q, "metrics", "forget", "accuracy")),
                             cell(get_path(q, "metrics", "forget", "auc")), cell(get_path(q, "metrics", "test", "auc")),
                             cell(get_path(q, "loss_mia_auc")),
                             cell(get_path(q, "recovered_fraction", "forget_accuracy"))])
        out.append(("table", ["model", "scheme", "forget acc", "forget AUC", "test AUC", "loss-MIA AUC",
                              "recovered (forget acc)"], rows))
        if "quantization" in images:
            out.append(("img", images["quantization"], "Forget accuracy in full precision and quantized."))
    if relearn:
        out.append(("h3", "Relearning attack"))
        first = get_path(summary, "models", relearn[0], "relearning")
        cfg = report["config"]["audit"]
        out.append(("p", f"Each model is fine-tuned for {cfg['relearn_steps']} steps (AdamW, lr {cfg['relearn_lr']:g}) "
                         f"on {cell(first.get('attack_patients'))} forget patient(s); accuracy is measured on the "
                         f"other {cell(first.get('eval_patients'))}. A model that only hid the patients relearns "
                         "them faster than the retrained model."))
        steps = first["step"]
        rows = [[str(int(s)), *[num(get_path(summary, "models", m, "relearning")["accuracy"][i]) for m in relearn]]
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

    hashes = request["salted_hashes"]
    flat = hashes if hashes and isinstance(hashes[0], str) else [h for group in hashes for h in group]
    return out + closing_blocks(report, "Forget request (salted hashes)", flat)


def write_report(report: dict[str, Any], artifacts: RunArtifacts, out: str | Path, plots: bool = True) -> dict:
    """Write ``plots/*.png``, ``audit.md`` and ``audit.html`` into ``out``; returns their paths."""
    summary = report["summary"]
    drawn = [("utility", plot_utility, summary), ("roc", plot_roc, artifacts),
             ("histograms", plot_histograms, artifacts), ("quantization", plot_quantization, summary),
             ("relearning", plot_relearning, summary)]
    return write_documents(out, "audit", lambda images: blocks(report, images), drawn if plots else [])


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
