"""The human-readable language-model audit: ``lm_audit.md`` and a self-contained ``lm_audit.html`` (tables +
matplotlib PNGs), rendered from one list of blocks with :mod:`medforget.audit.render`'s Markdown / HTML writers.

Nothing here reads patient data: the inputs are the audit dictionary and per-question / per-text numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medforget.audit.lm.config import LM_MODEL_NAMES, REFERENCE, LMArtifacts
from medforget.audit.lm.tables import criterion_cells
from medforget.audit.render import (
    COLORS,
    Block,
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

LM_COLORS = {"original": COLORS["original"], "unlearned": COLORS["unlearned"], "retain": COLORS["retrained"]}


def _color(name: str) -> str | None:
    return LM_COLORS.get(name.partition("@")[0])


def _style(name: str) -> str:
    return {"int8": "--", "int4": ":"}.get(name.partition("@")[2], "-")


def _interval(values: Any, digits: int = 3) -> str:
    return interval_text(values, signed=False, digits=digits, missing="")


# --- plots ---------------------------------------------------------------------------------------------------------
def plot_truth_ratios(artifacts: LMArtifacts, path: Path) -> Path | None:
    """Histograms of log10 truth ratio on the forget questions, one line per model."""
    names = [n for n in artifacts.truth_ratios if "@" not in n]
    if not names:
        return None
    plt, fig, axes = figure(1, 1, 5.0, 3.2)
    ax = axes[0, 0]
    values = {n: np.log10(np.clip(artifacts.truth_ratios[n], 1e-12, None)) for n in names}
    both = np.concatenate(list(values.values()))
    both = both[np.isfinite(both)]
    lo, hi = (np.percentile(both, 1), np.percentile(both, 99)) if len(both) else (-1.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 25)
    for name in [n for n in LM_MODEL_NAMES if n in values]:
        ax.hist(np.clip(values[name], bins[0], bins[-1]), bins=bins, histtype="step", lw=1.8, color=_color(name),
                ls="--" if name == "original" else "-", label=name)
    ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set(xlabel="log10 truth ratio (forget questions)", ylabel="questions",
           title="truth ratios: unlearned vs retain-only")
    ax.legend(fontsize=8)
    return save_figure(plt, fig, path)


def plot_lm_roc(artifacts: LMArtifacts, path: Path) -> Path | None:
    """ROC curve of every attack (forget texts = members vs holdout texts), one panel per attack."""
    names = list(artifacts.scores)
    attacks = sorted({a for n in names for a in artifacts.scores[n]})
    panels = {attack: [(name, *scores, {"color": _color(name), "ls": _style(name), "lw": 1.4})
                       for name in names if (scores := artifacts.scores[name].get(attack)) is not None]
              for attack in attacks}
    return plot_roc_panels(panels, path, ncols=3, nonmembers="holdout", legend_size=6)


def plot_extraction(report: dict[str, Any], path: Path) -> Path | None:
    """Identifier extraction rate of every model (and quantized copy): forget patients vs holdout patients."""
    names = list(report["models"])
    if not names:
        return None
    plt, fig, axes = figure(1, 1, max(4.5, 1.1 * len(names)), 3.2)
    ax = axes[0, 0]
    x = np.arange(len(names))
    forget = [get_path(report, "models", n, "extraction", "forget", "rate") for n in names]
    holdout = [get_path(report, "models", n, "extraction", "holdout", "rate") for n in names]
    ax.bar(x - 0.2, [v if v is not None else np.nan for v in forget], 0.4, color=[_color(n) for n in names],
           label="forget patients")
    ax.bar(x + 0.2, [v if v is not None else np.nan for v in holdout], 0.4, color="lightgrey",
           label="holdout (never seen)")
    ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax.set(ylabel="patients whose MRN / DOB is emitted", ylim=(0, 1.3), yticks=np.linspace(0, 1, 6),
           title="identifier extraction")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return save_figure(plt, fig, path)


# --- content -------------------------------------------------------------------------------------------------------
def lm_blocks(report: dict[str, Any], images: dict[str, str]) -> list[Block]:
    """The report as a list of blocks (shared by Markdown and HTML)."""
    models = report["models"]
    base_models = [n for n in models if "@" not in n]
    head = report.get("headline") or {}
    headline = head.get("attack") or report["config"]["audit"]["headline_attack"]
    out: list[Block] = [("h1", "medforget language-model audit: are the forget patients really gone?")]
    verdict = {"pass": "PASS: every counted criterion's 90% interval lies within its tolerance",
               "fail": "FAIL: at least one counted criterion's 95% interval lies wholly outside its tolerance",
               "inconclusive": "INCONCLUSIVE: this request cannot decide at least one counted criterion",
               "n/a": "no verdict (no criterion with power and an interval)"}[report["verdict"]]
    out.append(("p", f"**Verdict: {verdict}.** {report.get('verdict_summary', '')}"))
    identity, request = report["data"]["corpus_identity"], report["forget_request"]
    probes = report["data"]["probes"]
    out.append(("list", [
        provenance_line(report),
        f"corpus SHA-256 `{identity['corpus_sha256'][:16]}…`, split SHA-256 `{identity['split_sha256'][:16]}…` "
        f"({', '.join(f'{k}={v}' for k, v in identity['settings'].items())})",
        f"forget set: {request['patients']} patients, recorded only as salted hashes ({request['hash']}; the salt is "
        "kept apart from this report)",
        "questions asked: " + ", ".join(f"{k} {v}" for k, v in probes["questions"].items())
        + "; membership texts: " + ", ".join(f"{k} {v}" for k, v in probes["mia_texts"].items()),
        "models: " + ", ".join(f"{n} ({get_path(models, n, 'provenance', 'kind') or 'n/a'}"
                               + (f", {get_path(models, n, 'provenance', 'method')}"
                                  if get_path(models, n, "provenance", "method") else "") + ")" for n in base_models),
    ]))

    if report["criteria"]:
        boot = report.get("bootstrap") or {}
        out.append(("h2", "Criteria (unlearned vs retain-only)"))
        out.append(("p", "Each criterion is decided on a paired patient-bootstrap interval "
                         f"({boot.get('replicates', 'n/a')} replicates; forget, retain and holdout patients "
                         "resampled): PASS when the 90% interval lies within the tolerance, FAIL when the 95% "
                         "interval lies wholly outside, otherwise INCONCLUSIVE (the smallest gap this request can "
                         "resolve and the forget patients a decision would need are given). Power: the same "
                         "criterion for the original model; one the original does not fail (nor lie outside the "
                         "tolerance on) has no power on this model and does not count. Direction: the signed gap "
                         "to the retain-only model (under-unlearned: still behaves as if trained on the forget "
                         "patients; over-unlearned: treats them as less likely than never-seen patients, itself a "
                         "leak)."))
        rows = [[c["criterion"], c["description"], *criterion_cells(c), c.get("reason", "")]
                for c in report["criteria"]]
        out.append(("table", ["criterion", "what", "value [90% CI]", "tolerance", "verdict", "power (original)",
                              "direction [95% CI]", "why"], rows))

    directions = report.get("directions") or {}
    if directions:
        out.append(("h2", "Direction: signed gaps to the retain-only model"))
        out.append(("p", "Model minus retain-only model, with the 95% patient-bootstrap interval. A higher forget "
                         "probability, ROUGE, extraction rate or attack AUC, a lower truth ratio, or a negative "
                         "privleak (MUSE) means under-unlearned; the opposite over-unlearned; "
                         "indistinguishable when the interval holds 0."))
        labels = list(dict.fromkeys(k for rows_ in directions.values() for k in rows_))
        rows = [[label, *[get_path(directions, n, label, "text") or "" for n in directions]] for label in labels]
        out.append(("table", ["quantity", *directions], rows))

    base = report["config"]["truth_ratio_base"]
    out.append(("h2", "Knowledge (TOFU)"))
    out.append(("p", "Probability: length-normalised P(answer | question), mean over questions. ROUGE: ROUGE-L recall "
                     "of the greedy answer. Truth ratio R = mean over perturbed answers of their normalised "
                     f"probability / that of the true answer (denominator: the {base}); forget TR = mean "
                     "min(R, 1/R), retain TR score = mean max(0, 1 − R). Forget quality: KS-test p-value of the "
                     "forget-set truth ratios against the retain-only model's (high = indistinguishable). Utility: "
                     "harmonic mean of the retain probability, ROUGE and TR score (holdout: the same on never-seen "
                     "patients)."))
    header = ["model", "forget prob", "forget ROUGE", "forget TR", "forget quality (p)", "KS D", "retain prob",
              "retain ROUGE", "retain TR score", "utility", "holdout prob", "holdout ROUGE", "holdout utility"]
    paths = [("forget", "probability"), ("forget", "rouge_l_recall"), ("forget", "truth_ratio_forget_stat"),
             ("forget_quality", "p_value"), ("forget_quality", "statistic"), ("retain", "probability"),
             ("retain", "rouge_l_recall"), ("retain", "truth_ratio_score"), ("model_utility",),
             ("holdout", "probability"), ("holdout", "rouge_l_recall"), ("holdout_utility",)]
    rows = [[n, *[num(get_path(models[n], *p)) for p in paths]] for n in models]
    rows += [[f"Δ {n} − retain", *["" if p[0] == "forget_quality" else
                                   num(get_path(report, "gaps_to_retain", n, *p), True) for p in paths]]
             for n in base_models if n != REFERENCE]
    out.append(("table", header, rows))
    if "truth_ratios" in images:
        out.append(("img", images["truth_ratios"], "Forget-set truth ratios of each model."))

    out.append(("h2", "Identifier extraction"))
    out.append(("p", "Share of patients for whom some greedy generation emits their MRN or date of birth: answers to "
                     "the MRN and date-of-birth questions, and continuations of their notes up to the first "
                     "identifier. "
                     "Holdout patients were never trained on: their rate is the floor of chance."))
    header = ["model", "forget rate", "forget MRN", "forget DOB", "via questions", "via note prefixes",
              "holdout rate"]
    rows = [[n, *[num(get_path(models[n], "extraction", *p)) for p in
                  (("forget", "rate"), ("forget", "mrn"), ("forget", "dob"), ("forget", "qa"),
                   ("forget", "note_prefix"), ("holdout", "rate"))]] for n in models]
    out.append(("table", header, rows))
    if "extraction" in images:
        out.append(("img", images["extraction"], "Extraction rate before and after quantization."))

    attacks = list(get_path(models, REFERENCE, "mia") or {})
    if attacks:
        out.append(("h2", "Membership inference (MUSE)"))
        k = report["config"]["audit"].get("min_k")
        out.append(("p", "Forget patients' notes and QA texts (members of the original model) vs holdout patients' "
                         "(never trained on); higher score = more member-like; AUC A with the forget texts as "
                         "members. privleak in MUSE's convention: (A_retain − A) / (1 − A_retain) × 100: 0 is the "
                         "target, negative = under-unlearned (the forget texts still recognisable; un-unlearned "
                         "models score near −100), positive = over-unlearned. "
                         f"Judged attack: **{headline}** ({head.get('chosen_by', 'configured')}); MUSE's headline is "
                         f"{head.get('muse_headline', 'min_k')} (Min-K%, k = {k}). Power: the original model's "
                         "privleak against the retain-only model; an attack whose original privleak neither FAILs "
                         "nor lies outside the tolerance cannot see an un-unlearned model. Intervals: paired "
                         "patient bootstrap (95%)."))
        table_h = head.get("attacks") or {}
        header = ["attack", *[f"AUC {n}" for n in models], "power (original privleak)",
                  *[f"privleak {n}" for n in base_models if n != REFERENCE], "privleak unlearned: verdict, direction"]
        rows = []
        for a in attacks:
            h = table_h.get(a, {})
            power = ("n/a" if not h else f"{'yes' if h.get('has_power') else 'no power'} "
                     f"({num(h.get('original_privleak'), True)} {_interval(h.get('original_ci95'), 1)}, "
                     f"{str(h.get('original_verdict', 'n/a')).upper()})")
            name = a + (" (judged)" if a == headline else "") + (" (MUSE)" if a == head.get("muse_headline") else "")
            unl = get_path(models, "unlearned", "mia", a) or {}
            rows.append([name, *[num(get_path(models[n], "mia", a, "auc")) + " " + _interval(
                             get_path(models[n], "mia", a, "auc_ci95")) for n in models], power,
                         *[num(get_path(models[n], "mia", a, "privleak"), True) + " " + _interval(
                             get_path(models[n], "mia", a, "privleak_ci95"), 1)
                           for n in base_models if n != REFERENCE],
                         f"{str(unl.get('privleak_verdict', 'n/a')).upper()}, {unl.get('privleak_direction', 'n/a')}"])
        out.append(("table", header, rows))
        if "roc" in images:
            out.append(("img", images["roc"], "ROC curves of every attack (dashed: int8, dotted: int4)."))

    quantized = [n for n in models if "@" in n]
    if quantized:
        out.append(("h2", "Quantization attack"))
        out.append(("p", "Copies of the model with int8 (torchao dynamic int8) or 4-bit round-to-nearest weights "
                         "(groups of " + str(report["config"]["audit"]["int4_group_size"]) + "; output head and "
                         "embeddings " + ("quantized" if report["config"]["audit"]["quantize_head"] else
                                          "in full precision") + "). Recovered: share of the forgotten "
                         "(original − unlearned) performance that comes back (0 = none, 1 = all)."))
        header = ["model", "forget prob", "forget ROUGE", "extraction (forget)", f"AUC {headline}",
                  "recovered prob", "recovered ROUGE", "recovered extraction"]
        paths = [("forget", "probability"), ("forget", "rouge_l_recall"), ("extraction", "forget", "rate"),
                 ("mia", headline, "auc"), *[("recovered_fraction", k) for k in
                                             ("forget_probability", "forget_rouge_l_recall", "extraction_rate")]]
        rows = [[n, *[num(get_path(models[n], *p)) for p in paths]]
                for n in [*(m for m in base_models if m != REFERENCE), *quantized]]
        out.append(("table", header, rows))

    semeval = report.get("semeval") or {}
    if semeval.get("models"):
        out.append(("h2", "SemEval-2025 Task 4 score"))
        out.append(("p", "Reproduced from the task's official evaluation script: regurgitation = ROUGE-L recall "
                         "(rouge_score, stemming) of greedy completions (at most "
                         f"{semeval['max_new_tokens']} new tokens) of the first half of each note; knowledge = exact "
                         "match (strip, lower-case) of greedy answers; forget values as 1 − v; task aggregate = "
                         "harmonic mean of the forget and retain values; MIA score = 1 − 2·|AUC − 0.5| of the loss "
                         "attack (forget vs holdout texts); final = mean of task aggregate, MIA score and the utility "
                         f"term. Note: {semeval['note']}. Higher is better; the interval resamples patients (95%)."))
        task = semeval["task"]
        rows = []
        for n, m in semeval["models"].items():
            f, r = m["means"]["forget"][task], m["means"]["retain"][task]
            rows.append([n, num(f["regurgitation"]), num(f["knowledge"]), num(r["regurgitation"]),
                         num(r["knowledge"]), num(m["task_aggregate"]), num(m["mia_auc"]), num(m["mia_score"]),
                         num(m["utility"]), f"{num(m['final'])} {_interval(m.get('final_ci95'))}"])
        out.append(("table", ["model", "forget regurgitation", "forget knowledge", "retain regurgitation",
                              "retain knowledge", "task aggregate (harmonic)", "loss AUC", "MIA score",
                              "utility (holdout patients)", "final [95% CI]"], rows))

    timing = report.get("timing") or {}
    out.append(("h2", "Time"))
    out.append(("table", ["unlearning (s)", "retain-only training (s)", "original training (s)",
                          "unlearning / retain-only"],
                [[num(timing.get("unlearn_seconds")), num(timing.get("retain_train_seconds")),
                  num(timing.get("original_train_seconds")), num(timing.get("ratio"))]]))
    return out + closing_blocks(report, "Forget set (salted hashes)", request["salted_hashes"])


def write_lm_report(report: dict[str, Any], artifacts: LMArtifacts, out: str | Path, plots: bool = True) -> dict:
    """Write ``plots/*.png``, ``lm_audit.md`` and ``lm_audit.html`` into ``out``; returns their paths."""
    drawn = [("truth_ratios", plot_truth_ratios, artifacts), ("roc", plot_lm_roc, artifacts),
             ("extraction", plot_extraction, report)]
    return write_documents(out, "lm_audit", lambda images: lm_blocks(report, images), drawn if plots else [],
                           prefix="lm_", title="medforget language-model audit")
