"""Language-model evaluation: TOFU's knowledge metrics (probability, ROUGE-L, truth ratio, forget quality, model
utility), identifier extraction, MUSE's membership attacks and privacy leakage, and the quantization attack."""

from medforget.audit.lm.evaluate import LMEvaluation, Probes, build_probes, evaluate_language_model, quantize_lm
from medforget.audit.lm.metrics import (
    answer_probability,
    contains_identifier,
    forget_quality,
    harmonic_mean,
    model_utility,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_statistics,
)
from medforget.audit.lm.mia import (
    ATTACKS,
    TokenScores,
    attack_scores,
    mia_auc,
    mia_metrics,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    reference_score,
    zlib_score,
)
from medforget.audit.lm.scoring import greedy_generate, score_texts

__all__ = [
    "ATTACKS", "LMEvaluation", "Probes", "TokenScores", "answer_probability", "attack_scores", "build_probes",
    "contains_identifier", "evaluate_language_model", "forget_quality", "greedy_generate", "harmonic_mean", "mia_auc",
    "mia_metrics", "min_k_plus_plus_score", "min_k_score", "model_utility", "privleak", "quantize_lm",
    "reference_score", "rouge_l_recall", "score_texts", "truth_ratio", "truth_ratio_statistics", "zlib_score",
]
