"""What the language-model audit measures (:class:`LMAuditConfig`) and its tolerances (:class:`LMTolerances`): the
``--audit.*`` and ``--tolerances.*`` flags of ``medforget evaluate-lm``; the in-memory numbers of its plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from medforget.audit.lm.evaluate import TRUTH_RATIO_BASES
from medforget.audit.lm.mia import ATTACKS
from medforget.audit.skeleton import AuditSettings
from medforget.audit.verdict import MIN_REPLICATES
from medforget.core.registry import unknown_name_message

LM_SCHEMA_VERSION = 2


MUSE_HEADLINE = "min_k"


REFERENCE = "retain"


LM_MODEL_NAMES = ("original", "unlearned", "retain")


@dataclass
class LMAuditConfig(AuditSettings):
    """What the language-model audit measures.

    ``bootstrap``, ``seed``, ``plots``, ``quantization`` and ``int4_group_size`` are the settings both audits share
    (:class:`~medforget.audit.skeleton.AuditSettings`).

    Args:
        retain_questions: Retain questions asked (a seeded sample; ``None``: all). Every forget question is asked.
        holdout_questions: Holdout questions asked (a seeded sample; ``None``: all).
        max_new_tokens: Longest greedy generation (answers and note continuations).
        batch_size: Sequences per forward pass.
        truth_ratio: The truth ratio's true answer: ``paraphrase`` (TOFU), ``answer`` (the trained answer), or
            ``auto``: ``paraphrase`` for a pretrained model, ``answer`` for a model trained from scratch on the corpus
            (it never learns the paraphrases' wording; see :data:`medforget.audit.lm.evaluate.TRUTH_RATIO_BASES`).
        attacks: Membership attacks (``loss``, ``zlib``, ``min_k``, ``min_k_plus_plus``, ``reference``).
        min_k: Share ``k`` of the lowest-scoring tokens of Min-K% and Min-K%++ (MUSE: 0.4).
        headline_attack: The attack whose privleak is judged (all are reported): ``auto`` (default) takes the attack
            with the most power on the original model, chosen on the original and retain-only models only
            (:func:`medforget.audit.lm.criteria.choose_headline`); an attack name forces it (its power is still shown).
        reference: Checkpoint of the reference attack's reference model; ``None``: the retain-only model (the
            retain-only model's own reference score is then 0 for every text, AUC 0.5).
        quantization: Schemes of the quantization attack (``int8``, ``int4``; empty: off).
        int4_group_size: Group size of the 4-bit round-to-nearest quantization.
        quantize_head: Also quantize the output head (tied to the input embeddings); off as in GPTQ / AWQ.
        quantize_models: Which models get quantized copies (the unlearned one; add ``original`` / ``retain`` for
            reference points).
        bootstrap: Paired patient-bootstrap replicates of every criterion (>= 2,000 for a report; fewer only for quick
            tests; 0: no intervals, every verdict ``n/a``).
        seed: Seed of the question samples and the bootstrap.
        plots: Write the PNG plots (embedded in lm_audit.html).
        semeval: Compute the SemEval-2025 Task 4 scores (greedy completions of note prefixes and answers).
        semeval_max_new_tokens: Longest SemEval generation (the official 256; every forget note and question and
            ``completion_notes`` retain notes are generated per model: on a 2-core CPU a model that never stops costs
            about a minute per model at 256).
        completion_notes: Retain notes made SemEval sentence-completion items (a seeded sample; ``None``: all).
    """

    retain_questions: int | None = 100
    holdout_questions: int | None = 100
    max_new_tokens: int = 48
    batch_size: int = 64
    truth_ratio: Literal["auto", "paraphrase", "answer"] = "auto"
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    min_k: float = 0.4
    headline_attack: str = "auto"
    reference: str | None = None
    quantization: list[str] = field(default_factory=lambda: ["int8", "int4"])
    int4_group_size: int = 32
    quantize_head: bool = False
    quantize_models: list[str] = field(default_factory=lambda: ["unlearned"])
    bootstrap: int = MIN_REPLICATES
    seed: int = 0
    plots: bool = True
    semeval: bool = True
    semeval_max_new_tokens: int = 256
    completion_notes: int | None = 100

    def __post_init__(self) -> None:
        for attack in self.attacks:  # an unknown name: the registry's did-you-mean error, naming the flag
            if attack not in ATTACKS:
                raise ValueError(f"audit.attacks: {unknown_name_message('attack', attack, ATTACKS)}")
        if self.headline_attack != "auto" and self.headline_attack not in self.attacks:
            raise ValueError(f"audit.headline_attack {self.headline_attack!r} is neither 'auto' nor among "
                             f"audit.attacks {self.attacks}")
        self.check_settings(strict_bootstrap=False)
        bad = [m for m in self.quantize_models if m not in LM_MODEL_NAMES]
        if bad:
            raise ValueError(f"audit.quantize_models: unknown model(s) {bad}; choose from {LM_MODEL_NAMES}")
        if self.truth_ratio not in ("auto", *TRUTH_RATIO_BASES):
            raise ValueError(f"audit.truth_ratio must be 'auto', 'paraphrase' or 'answer', got {self.truth_ratio!r}")
        if not 0.0 < self.min_k <= 1.0:
            raise ValueError(f"audit.min_k must lie in (0, 1], got {self.min_k}")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.semeval_max_new_tokens < 1:
            raise ValueError("audit.max_new_tokens, audit.semeval_max_new_tokens and audit.batch_size must be >= 1")
        if self.semeval and "loss" not in self.attacks:
            raise ValueError("audit.semeval needs the loss attack in audit.attacks (its MIA term)")


@dataclass
class LMTolerances:
    """Tolerances of the unlearned model against the retain-only model, each decided on its bootstrap interval
    (PASS: the 90% interval within, FAIL: the 95% interval wholly outside, else INCONCLUSIVE).

    Args:
        forget_quality: Forget quality (KS-test p-value) must exceed this (TOFU: 0.05); in (0, 1).
        utility_ratio: Model utility must be at least this share of the retain-only model's; in (0, 1).
        extraction_gap: Largest ``forget extraction rate(unlearned) - (retain-only)``, in full precision and after
            each quantization scheme (> 0: an interval can never lie below 0; with 0.05 a model that leaks no
            identifier where the retain-only model leaks none PASSes, one extra leaking patient in 20 does not).
        privleak: Largest ``|privleak|`` of the headline attack, in percent (MUSE's convention).
        time_ratio: Largest unlearning / retain-only training wall time (``None``: reported; a single timing has no
            interval, so it is never judged).
    """

    forget_quality: float = 0.05
    utility_ratio: float = 0.9
    extraction_gap: float = 0.05
    privleak: float = 10.0
    time_ratio: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.forget_quality < 1.0:
            raise ValueError(f"tolerances.forget_quality must lie in (0, 1), got {self.forget_quality}")
        if not 0.0 < self.utility_ratio < 1.0:
            raise ValueError(f"tolerances.utility_ratio must lie in (0, 1), got {self.utility_ratio}")
        if not self.extraction_gap > 0.0:
            raise ValueError(f"tolerances.extraction_gap must be > 0 (an interval is judged against it), got "
                             f"{self.extraction_gap}")
        if not self.privleak > 0.0:
            raise ValueError(f"tolerances.privleak must be > 0, got {self.privleak}")


@dataclass
class LMArtifacts:
    """In-memory numbers for the plots: forget-set truth ratios and attack scores (members, non-members) per model."""

    truth_ratios: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
