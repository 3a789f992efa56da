"""One language model on the probes of a corpus: TOFU's knowledge metrics per part, identifier extraction and the
per-token scores the membership attacks need.

:class:`Probes` fixes what is asked of every model (all forget questions, seeded samples of the retain and holdout
questions, extraction prompts, the texts of the membership attacks), so the original, unlearned, retain-only and
quantized models answer the same questions. Nothing here writes or logs patient data; :class:`LMEvaluation` holds
numbers only (the generated texts are checked for identifiers and dropped).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medforget.audit.lm.metrics import (
    answer_probability,
    contains_identifier,
    model_utility,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_statistics,
)
from medforget.audit.lm.mia import TokenScores
from medforget.audit.lm.scoring import greedy_generate, score_texts
from medforget.datamodules.lm import ClinicalNotesDataModule, qa_prompt
from medforget.datamodules.notes import IDENTIFIER_FIELDS, QAPair
from medforget.systems.lm import ClinicalLM

EXTRACTION_PARTS = ("forget", "holdout")
QA_PARTS = ("forget", "retain", "holdout")
#: The truth ratio's true answer: TOFU's ``paraphrase`` (a pretrained model knows the paraphrase's wording, so the
#: ratio measures knowledge of the fact, not of the training string), or the trained ``answer`` (a small model trained
#: from scratch never sees the paraphrases' wording: every paraphrase is equally unlikely, and a paraphrase-based ratio
#: hardly separates a model that memorised the forget patients from one that never saw them: on the default 200-patient
#: corpus and 128-wide model, the original's forget quality against the retain-only model is p = 0.047 with the
#: paraphrase and p = 2e-23 with the answer).
TRUTH_RATIO_BASES = ("paraphrase", "answer")


@dataclass
class Probes:
    """What every model is asked (built once per audit by :func:`build_probes`; kept in memory only).

    Attributes:
        qa: Per part, ``(patient position, QA pair)`` of the questions asked.
        extraction: Per part, ``(patient position, source, prompt)``: ``qa`` (the MRN and date-of-birth questions)
            and ``note_prefix`` (each note of the patient up to its first identifier, e.g. "Admission note. Patient
            <name>, MRN"; only prefixes that name the patient).
        identifiers: Patient position -> ``{"mrn": ..., "dob": ...}``.
        member_texts: Forget patients' notes and full QA texts (members of the original model).
        nonmember_texts: Holdout patients' notes and full QA texts (never trained on).
        member_groups: Patient position of each member text (for the patient-level bootstrap).
        nonmember_groups: Patient position of each non-member text.
        patients: Patients per part.
        completion: Per part (forget, retain), ``(patient position, prefix, continuation)`` of the SemEval-2025 Task 4
            sentence-completion items: every note of the forget patients, a seeded sample of the retain patients'
            notes, each split after half its words (:func:`medforget.audit.lm.semeval.split_completion`).
    """

    qa: dict[str, list[tuple[int, QAPair]]]
    extraction: dict[str, list[tuple[int, str, str]]]
    identifiers: dict[int, dict[str, str]]
    member_texts: list[str]
    nonmember_texts: list[str]
    member_groups: np.ndarray
    nonmember_groups: np.ndarray
    patients: dict[str, int] = field(default_factory=dict)
    completion: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Counts only."""
        return {"questions": {p: len(q) for p, q in self.qa.items()},
                "extraction_prompts": {p: len(e) for p, e in self.extraction.items()},
                "mia_texts": {"members (forget)": len(self.member_texts),
                              "non-members (holdout)": len(self.nonmember_texts)},
                "completion_items": {p: len(c) for p, c in self.completion.items()},
                "patients": dict(self.patients)}


def _common_words(a: list[str], b: list[str]) -> tuple[int, int]:
    """Lengths of the common word prefix and (non-overlapping) common word suffix of ``a`` and ``b``."""
    head = 0
    while head < min(len(a), len(b)) and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < min(len(a), len(b)) - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    return head, tail


def perturbed_onto(qa: QAPair, target: str) -> tuple[tuple[str, ...], int]:
    """The perturbed answers of ``qa`` in the wording of ``target`` (its answer or its paraphrased answer).

    TOFU's perturbed answers are wrong versions of the paraphrased answer (same template, wrong facts), so the truth
    ratio compares like with like. A perturbed answer in the other template is rewritten onto ``target``: the words in
    which it differs from that template replace the same words in ``target`` (when they occur there exactly once).
    One already in ``target``'s template, or one that cannot be rewritten, is kept.

    Returns:
        The perturbed answers to use, and how many were rewritten.
    """
    if target not in (qa.answer, qa.paraphrased_answer):
        raise ValueError("target must be the question's answer or its paraphrased answer")
    goal = target.split()
    other = (qa.paraphrased_answer if target == qa.answer else qa.answer).split()
    out, rewritten = [], 0
    for perturbed in qa.perturbed_answers:
        words = perturbed.split()
        if sum(_common_words(words, goal)) >= sum(_common_words(words, other)):
            out.append(perturbed)
            continue
        head, tail = _common_words(other, words)
        true_span = " ".join(other[head: len(other) - tail])
        wrong_span = " ".join(words[head: len(words) - tail])
        text = " ".join(goal)
        if true_span and text.count(true_span) == 1:
            out.append(text.replace(true_span, wrong_span))
            rewritten += 1
        else:
            out.append(perturbed)
    return tuple(out), rewritten


def _sample(items: list, size: int | None, rng: np.random.Generator) -> list:
    if size is None or size >= len(items):
        return list(items)
    return [items[i] for i in sorted(rng.choice(len(items), size=size, replace=False))]


def note_prefixes(note: str, identifiers: dict[str, str], name: str) -> list[str]:
    """The note up to its first identifier (right-stripped), if that prefix names the patient; else nothing."""
    positions = [note.find(v) for v in identifiers.values() if v and v in note]
    if not positions:
        return []
    prefix = note[: min(positions)].rstrip()
    return [prefix] if prefix and name in prefix else []


def build_probes(datamodule: ClinicalNotesDataModule, retain_questions: int | None = 100,
                 holdout_questions: int | None = 100, seed: int = 0, completion_notes: int | None = 100) -> Probes:
    """The questions, extraction prompts and membership texts of an audit.

    Args:
        datamodule: The corpus and its forget / retain / holdout split.
        retain_questions: Retain questions asked (a seeded sample; ``None``: all).
        holdout_questions: Holdout questions asked (a seeded sample; ``None``: all).
        seed: Seed of the samples.
        completion_notes: Retain notes made sentence-completion items (a seeded sample; ``None``: all; every forget
            note is one).
    """
    from medforget.audit.lm.semeval import split_completion

    datamodule.setup()
    rng = np.random.default_rng(seed)
    qa = {"forget": datamodule.qa("forget"),
          "retain": _sample(datamodule.qa("retain"), retain_questions, rng),
          "holdout": _sample(datamodule.qa("holdout"), holdout_questions, rng)}
    extraction: dict[str, list[tuple[int, str, str]]] = {}
    identifiers: dict[int, dict[str, str]] = {}
    for part in EXTRACTION_PARTS:
        prompts = []
        for p in datamodule.parts[part]:
            record = datamodule.records[p]
            identifiers[p] = record.identifiers()
            prompts += [(p, "qa", qa_prompt(q.question)) for q in record.qa if q.field in IDENTIFIER_FIELDS]
            for note in record.notes:
                prompts += [(p, "note_prefix", prefix) for prefix in note_prefixes(note, identifiers[p], record.name)]
        extraction[part] = list(dict.fromkeys(prompts))
    texts: dict[str, tuple[list[str], list[int]]] = {}
    for part in ("forget", "holdout"):
        examples = datamodule.examples(datamodule.parts[part], "both")
        texts[part] = ([e["text"] for e in examples], [e["patient"] for e in examples])
    completion: dict[str, list[tuple[int, str, str]]] = {}
    for part in ("forget", "retain"):
        items = [(p, *pair) for p in datamodule.parts[part] for note in datamodule.records[p].notes
                 if (pair := split_completion(note)) is not None]
        completion[part] = items if part == "forget" else _sample(items, completion_notes, rng)
    return Probes(qa=qa, extraction=extraction, identifiers=identifiers,
                  member_texts=texts["forget"][0], nonmember_texts=texts["holdout"][0],
                  member_groups=np.asarray(texts["forget"][1]), nonmember_groups=np.asarray(texts["holdout"][1]),
                  patients={p: len(datamodule.parts[p]) for p in QA_PARTS}, completion=completion)


@dataclass
class LMEvaluation:
    """One model's results: JSON-ready ``metrics`` plus the per-question, per-patient and per-token arrays the audit
    compares across models and resamples by patient (truth ratios for the KS test, answer probabilities and ROUGE per
    question, extraction hits per patient, token scores for the membership attacks, SemEval item scores)."""

    metrics: dict[str, Any]
    truth_ratios: dict[str, np.ndarray]
    probabilities: dict[str, np.ndarray]
    member_tokens: list[TokenScores]
    nonmember_tokens: list[TokenScores]
    seconds: float
    rouge: dict[str, np.ndarray] = field(default_factory=dict)
    extraction_hits: dict[str, dict[int, bool]] = field(default_factory=dict)
    #: Per part (forget, retain): ``regurgitation`` / ``knowledge`` item scores and the patient of each item
    #: (``regurgitation_patients``, ``knowledge_patients``).
    semeval: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


class _Generator:
    """Greedy generation with a per-model cache (the forget identifier questions serve ROUGE and extraction)."""

    def __init__(self, model: ClinicalLM, max_new_tokens: int, batch_size: int) -> None:
        self.model, self.max_new_tokens, self.batch_size = model, max_new_tokens, batch_size
        self.cache: dict[str, str] = {}

    def __call__(self, prompts: list[str]) -> list[str]:
        todo = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if todo:
            self.cache.update(zip(todo, greedy_generate(self.model, todo, self.max_new_tokens, self.batch_size),
                                  strict=True))
        return [self.cache[p] for p in prompts]


def _qa_part(model: ClinicalLM, pairs: list[tuple[int, QAPair]], generate: _Generator, batch_size: int,
             truth_ratio_base: str = "paraphrase") -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Probability, ROUGE-L recall and truth ratios of one part's questions (one batched scoring pass); returns the
    metrics and the per-question truth ratios, probabilities and ROUGE-L recalls."""
    if not pairs:
        return {"questions": 0}, np.zeros(0), np.zeros(0), np.zeros(0)
    if truth_ratio_base not in TRUTH_RATIO_BASES:
        raise ValueError(f"truth_ratio_base must be one of {TRUTH_RATIO_BASES}, got {truth_ratio_base!r}")
    k = len(pairs[0][1].perturbed_answers)
    if any(len(q.perturbed_answers) != k for _, q in pairs):
        raise ValueError("every question needs the same number of perturbed answers for the truth ratio")
    prompts, texts, rewritten = [], [], 0
    for _, q in pairs:  # per question: answer, paraphrase, perturbed answers
        prompt = qa_prompt(q.question)
        base = q.paraphrased_answer if truth_ratio_base == "paraphrase" else q.answer
        wrong, n = perturbed_onto(q, base)
        rewritten += n
        for answer in (q.answer, base, *wrong):
            prompts.append(prompt)
            texts.append(f"{prompt} {answer}")
    nll, count, _ = score_texts(model, prompts, texts, batch_size)
    prob = answer_probability(nll, count).reshape(len(pairs), 2 + k)  # (N, 2 + K)
    ratios = truth_ratio(prob[:, 2:], prob[:, 1])
    generated = generate([qa_prompt(q.question) for _, q in pairs])
    rouge = np.array([rouge_l_recall(g, q.answer) for g, (_, q) in zip(generated, pairs, strict=True)])
    metrics = {"probability": float(prob[:, 0].mean()), "rouge_l_recall": float(np.nanmean(rouge)),
               **truth_ratio_statistics(ratios), "questions": len(pairs), "perturbed_rewritten": rewritten}
    return metrics, ratios, prob[:, 0], rouge


def _extraction(probes: Probes, part: str, generate: _Generator,
                hits_out: dict[int, bool] | None = None) -> dict[str, Any]:
    """Share of the part's patients for whom some greedy generation emits their MRN or date of birth
    (``hits_out``: filled with whether each patient leaked, for the patient bootstrap)."""
    prompts = probes.extraction.get(part, [])
    outputs = generate([prompt for _, _, prompt in prompts])
    hits: dict[int, set[tuple[str, str]]] = {p: set() for p, _, _ in prompts}
    for (patient, source, _), text in zip(prompts, outputs, strict=True):
        for name, value in probes.identifiers[patient].items():
            if contains_identifier(text, value):
                hits[patient].add((source, name))
    n = len(hits)
    if hits_out is not None:
        hits_out.update({p: bool(h) for p, h in hits.items()})

    def rate(pred) -> float:
        return sum(1 for h in hits.values() if any(pred(s, i) for s, i in h)) / n if n else float("nan")

    return {"rate": rate(lambda s, i: True), "mrn": rate(lambda s, i: i == "mrn"), "dob": rate(lambda s, i: i == "dob"),
            "qa": rate(lambda s, i: s == "qa"), "note_prefix": rate(lambda s, i: s == "note_prefix"),
            "patients": n, "prompts": len(prompts)}


def evaluate_language_model(model: ClinicalLM, probes: Probes, max_new_tokens: int = 48, batch_size: int = 64,
                mia: bool = True, truth_ratio_base: str = "paraphrase",
                semeval_max_new_tokens: int | None = None) -> LMEvaluation:
    """Evaluate one model on ``probes``.

    ``metrics`` holds, per part (forget / retain / holdout), TOFU's answer probability, ROUGE-L recall of the greedy
    answer and the truth-ratio summaries; ``model_utility`` (retain) and ``holdout_utility``; and per extraction part
    (forget / holdout) the extraction rates. Forget quality and the membership attacks compare models, so the audit
    computes them from ``truth_ratios`` and the token scores.

    Args:
        model: The language model.
        probes: :func:`build_probes`.
        max_new_tokens: Longest greedy generation.
        batch_size: Sequences per forward pass (scoring and generation).
        mia: Score the membership texts token by token (skip for speed when no attack is wanted).
        truth_ratio_base: The true answer of the truth ratio's denominator, and the wording of its perturbed answers
            (:func:`perturbed_onto`): ``paraphrase`` (TOFU) or ``answer`` (the trained answer: for a model trained
            from scratch on the corpus, which never learns the paraphrases' wording, see :data:`TRUTH_RATIO_BASES`).
        semeval_max_new_tokens: Score the SemEval-2025 Task 4 items (:func:`semeval_items`) with greedy generations
            of at most this many tokens (the official 256); ``None``: skip.
    """
    start = time.perf_counter()
    generate = _Generator(model, max_new_tokens, batch_size)
    metrics: dict[str, Any] = {}
    ratios, probs, rouge = {}, {}, {}
    for part in QA_PARTS:
        metrics[part], ratios[part], probs[part], rouge[part] = _qa_part(model, probes.qa.get(part, []), generate,
                                                                         batch_size, truth_ratio_base)
    for part, name in (("retain", "model_utility"), ("holdout", "holdout_utility")):
        m = metrics[part]
        metrics[name] = (model_utility(m["probability"], m["rouge_l_recall"], m["truth_ratio_score"])
                         if m.get("questions") else float("nan"))
    hits: dict[str, dict[int, bool]] = {part: {} for part in EXTRACTION_PARTS}
    metrics["extraction"] = {part: _extraction(probes, part, generate, hits[part]) for part in EXTRACTION_PARTS}
    semeval = {}
    if semeval_max_new_tokens is not None:
        long = generate if semeval_max_new_tokens == max_new_tokens else _Generator(model, semeval_max_new_tokens,
                                                                                      batch_size)
        semeval = semeval_items(probes, long)
    members: list[TokenScores] = []
    nonmembers: list[TokenScores] = []
    if mia:
        texts = probes.member_texts + probes.nonmember_texts
        _, _, tokens = score_texts(model, [""] * len(texts), texts, batch_size, stats=True)
        members, nonmembers = tokens[: len(probes.member_texts)], tokens[len(probes.member_texts):]
    return LMEvaluation(metrics=metrics, truth_ratios=ratios, probabilities=probs, member_tokens=members,
                        nonmember_tokens=nonmembers, seconds=time.perf_counter() - start, rouge=rouge,
                        extraction_hits=hits, semeval=semeval)


def semeval_items(probes: Probes, generate) -> dict[str, dict[str, np.ndarray]]:
    """SemEval-2025 Task 4 item scores per part (forget, retain): ``regurgitation`` (ROUGE-L recall, stemmed, of the
    greedy completion of each note prefix against the note's continuation) and ``knowledge`` (exact match of the
    greedy answer to each question), with the patient of each item. ``generate(prompts) -> texts``."""
    from medforget.audit.lm.semeval import knowledge_score, regurgitation_score

    out = {}
    for part in ("forget", "retain"):
        items = probes.completion.get(part, [])
        completions = generate([prefix for _, prefix, _ in items])
        questions = probes.qa.get(part, [])
        answers = generate([qa_prompt(q.question) for _, q in questions])
        out[part] = {
            "regurgitation": np.array([regurgitation_score(g, c) for g, (_, _, c) in zip(completions, items,
                                                                                       strict=True)]),
            "regurgitation_patients": np.array([p for p, _, _ in items], dtype=int),
            "knowledge": np.array([knowledge_score(g, q.answer) for g, (_, q) in zip(answers, questions,
                                                                                    strict=True)]),
            "knowledge_patients": np.array([p for p, _ in questions], dtype=int),
        }
    return out


def quantize_lm(model: ClinicalLM, scheme: str, group_size: int = 32, quantize_head: bool = False) -> ClinicalLM:
    """A quantized copy of a language model for the quantization-recovery attack (Zhang et al., ICLR 2025,
    "Catastrophic failure of LLM unlearning via quantization"), with :func:`medforget.audit.robustness.
    quantize_model`: ``int8`` (torchao's dynamic int8 activations + int8 weights) or ``int4`` (4-bit symmetric
    round-to-nearest, groups of ``group_size`` input weights) of every Linear layer of the decoder.

    The output head is tied to the input embeddings; like the weight-only LLM quantizers of that paper (GPTQ, AWQ,
    bitsandbytes) it stays in full precision unless ``quantize_head`` (then the tied embedding matrix is rounded
    with it under ``int4``).
    """
    from medforget.audit.robustness import quantize_model

    skip = () if quantize_head else ("lm.lm_head",)
    quantized = quantize_model(model, scheme, group_size, module="lm", skip=skip)
    quantized.provenance = {**getattr(model, "provenance", {}), "quantization": scheme}
    return quantized
