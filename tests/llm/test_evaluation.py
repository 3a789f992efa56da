"""Language-model evaluation: every metric against a hand computation or its reference implementation (scipy,
scikit-learn), extraction detection, batched scoring and generation against the model's own methods, and the
quantized copies."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score
from torch import nn

from medforget.audit.lm import (
    TokenScores,
    answer_probability,
    attack_scores,
    build_probes,
    contains_identifier,
    evaluate_language_model,
    forget_quality,
    greedy_generate,
    harmonic_mean,
    mia_auc,
    mia_metrics,
    min_k_plus_plus_score,
    min_k_score,
    model_utility,
    privleak,
    quantize_lm,
    reference_score,
    rouge_l_recall,
    score_texts,
    truth_ratio,
    truth_ratio_statistics,
    zlib_score,
)
from medforget.audit.lm.evaluate import _extraction, note_prefixes, perturbed_onto
from medforget.audit.lm.mia import loss_score
from medforget.audit.robustness import quantize_model
from medforget.datamodules.lm import qa_prompt
from medforget.datamodules.notes import QAPair
from medforget.systems.lm import load_lm
from tests.llm.conftest import tiny_lm_datamodule


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_ckpt):
    return load_lm(tiny_lm_ckpt)


# --- TOFU metrics ---------------------------------------------------------------------------------------------------
def test_answer_probability_is_length_normalised():
    got = answer_probability(torch.tensor([2.0, 3.0, 0.0]), torch.tensor([4, 3, 5]))
    np.testing.assert_allclose(got, [math.exp(-0.5), math.exp(-1.0), 1.0])


def test_truth_ratio_hand_computed():
    perturbed = np.array([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5]])
    paraphrased = np.array([0.8, 0.25])
    np.testing.assert_allclose(truth_ratio(perturbed, paraphrased), [0.5, 2.0])
    np.testing.assert_allclose(truth_ratio(perturbed, paraphrased, "geometric"),
                               [(0.2 * 0.4 * 0.6) ** (1 / 3) / 0.8, 2.0])
    stats = truth_ratio_statistics(np.array([0.5, 2.0]))
    assert stats["truth_ratio_score"] == pytest.approx((0.5 + 0.0) / 2)  # mean max(0, 1 - R)
    assert stats["truth_ratio_forget_stat"] == pytest.approx((0.5 + 0.5) / 2)  # mean min(R, 1/R)
    assert stats["truth_ratio_mean"] == pytest.approx(1.25)
    with pytest.raises(ValueError):
        truth_ratio(perturbed[0], paraphrased)


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("The MRN of Ada Abbott is 1234567.", "The MRN of Ada Abbott is 1234567.", 1.0),
    ("The MRN of Ada Abbott is 7654321.", "The MRN of Ada Abbott is 1234567.", 6 / 7),
    ("Ada Abbott was born", "Ada Abbott was born on 1950-01-02.", 4 / 8),  # 1950 01 02 are three tokens
    ("b a", "a b", 0.5),  # LCS 1 of 2
    ("THE mrn!!", "the MRN", 1.0),  # lower-cased, punctuation dropped
    ("", "an answer", 0.0),
    ("I don't know.", "Ada takes insulin.", 0.0),
    ("Ada takes metformin and insulin daily", "Ada takes insulin.", 1.0),  # recall ignores extra words
])
def test_rouge_l_recall_hand_cases(prediction, reference, expected):
    assert rouge_l_recall(prediction, reference) == pytest.approx(expected, abs=1e-6)


def test_forget_quality_is_scipy_ks_p_value():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=60), rng.lognormal(0.5, size=60)
    got = forget_quality(a, b)
    assert got["p_value"] == pytest.approx(ks_2samp(a, b).pvalue)
    assert got["statistic"] == pytest.approx(ks_2samp(a, b).statistic)
    assert forget_quality(a, a)["p_value"] == 1.0
    # a monotone transform (TOFU's code uses 1 / R) leaves the p-value unchanged
    assert forget_quality(1 / a, 1 / b)["p_value"] == pytest.approx(got["p_value"])


def test_harmonic_mean_and_model_utility():
    assert harmonic_mean([1.0, 0.5, 0.25]) == pytest.approx(3 / (1 + 2 + 4))
    assert harmonic_mean([0.9, 0.3, 0.6]) == pytest.approx(hmean([0.9, 0.3, 0.6]))
    assert harmonic_mean([0.9, 0.0, 0.6]) == 0.0
    assert math.isnan(harmonic_mean([0.9, float("nan")]))
    assert model_utility(0.8, 0.5, 0.4) == pytest.approx(hmean([0.8, 0.5, 0.4]))


# --- membership attacks ---------------------------------------------------------------------------------------------
def _token_scores(logits: torch.Tensor, ids: torch.Tensor) -> TokenScores:
    """Min-K%++'s reference computation (Zhang et al.'s code): mu = sum p log p, sigma^2 = sum p (log p)^2 - mu^2."""
    logp = torch.log_softmax(logits.double(), -1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(0).sqrt()
    return TokenScores(logp.gather(-1, ids[:, None]).squeeze(-1).numpy(), mu.numpy(), sigma.numpy())


def test_min_k_and_min_k_plus_plus_on_given_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    ids = torch.tensor([0, 0, 2, 2, 1])
    tokens = _token_scores(logits, ids)
    logp = torch.log_softmax(logits.double(), -1)[torch.arange(5), ids].numpy()
    assert loss_score(tokens) == pytest.approx(logp.mean())
    # k = 40% of 5 tokens: the 2 lowest log-probabilities
    assert min_k_score(tokens, 0.4) == pytest.approx(np.sort(logp)[:2].mean())
    assert min_k_score(tokens, 0.01) == pytest.approx(logp.min())  # at least one token
    z = []
    for t in range(5):
        p = torch.softmax(logits[t].double(), -1).numpy()
        lp = np.log(p)
        mu = (p * lp).sum()
        sigma = math.sqrt((p * (lp - mu) ** 2).sum())
        z.append((lp[ids[t]] - mu) / sigma)
    assert min_k_plus_plus_score(tokens, 0.4) == pytest.approx(np.sort(z)[:2].mean())
    certain = TokenScores(np.array([0.0, -1.0]), mu=np.array([0.0, -1.0]), sigma=np.array([0.0, 0.5]))
    assert min_k_plus_plus_score(certain, 1.0) == 0.0  # a one-hot next-token distribution: z = 0, not nan
    with pytest.raises(ValueError, match="mu and sigma"):
        min_k_plus_plus_score(TokenScores(logp), 0.2)


def test_zlib_and_reference_scores():
    tokens = TokenScores(np.array([-1.0, -2.0, -3.0]))
    text = "Admission note. Patient Ada Abbott."
    assert zlib_score(tokens, text) == pytest.approx(-2.0 / len(zlib.compress(text.encode())))
    assert reference_score(TokenScores(np.array([-1.0, -1.0])), TokenScores(np.array([-2.0, -4.0]))) == 2.0
    scores = attack_scores("reference", [tokens], [text], reference=[tokens])
    assert scores.tolist() == [0.0]
    with pytest.raises(ValueError, match="reference"):
        attack_scores("reference", [tokens], [text])
    with pytest.raises(ValueError, match="unknown attack"):
        attack_scores("gradnorm", [tokens], [text])


def test_mia_auc_matches_sklearn_and_privleak():
    rng = np.random.default_rng(1)
    member = rng.normal(0.5, 1, 40)
    nonmember = np.r_[rng.normal(0, 1, 79), member[:1]]  # with a tie
    y = np.r_[np.ones(40), np.zeros(80)]
    expected = roc_auc_score(y, np.r_[member, nonmember])
    assert mia_auc(member, nonmember) == pytest.approx(expected)
    assert mia_metrics(member, nonmember)["auc"] == pytest.approx(expected)
    assert mia_auc(np.ones(5), np.zeros(5)) == 1.0  # higher score = member
    # MUSE's convention: (A_ret - A_unl) / (1 - A_ret) * 100, negative = under-unlearned, positive = over-unlearned
    assert privleak(0.66, 0.70) == pytest.approx((0.70 - 0.66) / (1 - 0.70) * 100) == pytest.approx(13.333, abs=1e-3)
    assert privleak(0.6, 0.5) == pytest.approx(-20.0)  # still recognisable: under-unlearned
    assert privleak(0.4, 0.5) == pytest.approx(20.0)  # less likely than never-seen text: over-unlearned
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # an un-unlearned model that every text gives away
    assert math.isnan(privleak(0.7, 1.0))


def test_score_texts_token_statistics_match_the_reference_computation(tiny_lm):
    texts = ["Admission note. Patient Ada Abbott, MRN 1234567.", "Question: Who?\nAnswer: Nobody."]
    nll, count, tokens = score_texts(tiny_lm, ["", ""], texts, batch_size=1, stats=True)
    batch = tiny_lm.encode(["", ""], texts)
    with torch.no_grad():
        ref_nll, ref_count = tiny_lm.sequence_nll(batch)
        logits = tiny_lm(batch).logits[:, :-1]
    torch.testing.assert_close(nll, ref_nll, atol=1e-4, rtol=1e-5)
    assert count.tolist() == ref_count.tolist()
    for i in range(2):
        n = int(count[i])
        expected = _token_scores(logits[i, :n], batch["input_ids"][i, 1: n + 1])
        np.testing.assert_allclose(tokens[i].logp, expected.logp, atol=1e-4)
        np.testing.assert_allclose(tokens[i].mu, expected.mu, atol=1e-4)
        np.testing.assert_allclose(tokens[i].sigma, expected.sigma, atol=1e-3)


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny_lm):
    dm = tiny_lm_datamodule()
    dm.setup()
    prompts = [qa_prompt(q.question) for _, q in dm.qa("forget")[:4]] + ["Admission note. Patient", "Discharge"]
    assert greedy_generate(tiny_lm, prompts, max_new_tokens=12, batch_size=4) == \
        tiny_lm.generate_answers(prompts, max_new_tokens=12)


# --- extraction -----------------------------------------------------------------------------------------------------
def test_contains_identifier():
    assert contains_identifier("The MRN of Ada is 1234567.", "1234567")
    assert contains_identifier("MRN 1 2 3 4 5 6 7, born", "1234567")  # spaced-out digits
    assert contains_identifier("born on 1950-01-02.", "1950-01-02")
    assert not contains_identifier("The MRN of Ada is 123456.", "1234567")
    assert not contains_identifier("born on 1950-01-03", "1950-01-02")
    assert not contains_identifier("anything", "")


def test_note_prefixes_stop_before_the_first_identifier():
    ids = {"mrn": "1234567", "dob": "1950-01-02"}
    assert note_prefixes("Admission note. Patient Ada Abbott, MRN 1234567, born 1950-01-02.", ids, "Ada Abbott") == \
        ["Admission note. Patient Ada Abbott, MRN"]
    assert note_prefixes("Discharge summary for Ada Abbott (DOB 1950-01-02, MRN 1234567).", ids, "Ada Abbott") == \
        ["Discharge summary for Ada Abbott (DOB"]
    assert note_prefixes("MRN 1234567: Ada Abbott.", ids, "Ada Abbott") == []  # the prefix does not name her
    assert note_prefixes("No identifiers here.", ids, "Ada Abbott") == []


def test_extraction_rate_per_patient_source_and_identifier():
    probes = build_probes(tiny_lm_datamodule(), retain_questions=5, holdout_questions=5)
    forget = probes.extraction["forget"]
    patients = sorted({p for p, _, _ in forget})
    assert len(patients) == 3 and {s for _, s, _ in forget} == {"qa", "note_prefix"}
    leaker, dob_leaker = patients[0], patients[1]

    def generate(prompts):  # a stub model: leaks the first patient's MRN from a note, the second's DOB from a question
        by_prompt = {prompt: (p, s) for p, s, prompt in forget}
        out = []
        for prompt in prompts:
            p, source = by_prompt[prompt]
            if p == leaker and source == "note_prefix":
                out.append(f" {probes.identifiers[p]['mrn']}, born somewhere")
            elif p == dob_leaker and source == "qa":
                out.append(f"She was born on {probes.identifiers[p]['dob']}.")
            else:
                out.append("I don't know.")
        return out

    got = _extraction(probes, "forget", generate)
    assert got["rate"] == pytest.approx(2 / 3) and got["patients"] == 3
    assert got["mrn"] == pytest.approx(1 / 3) and got["dob"] == pytest.approx(1 / 3)
    assert got["note_prefix"] == pytest.approx(1 / 3) and got["qa"] == pytest.approx(1 / 3)


def test_probes_and_perturbed_answers():
    dm = tiny_lm_datamodule()
    probes = build_probes(dm, retain_questions=10, holdout_questions=None, seed=3)
    assert probes.summary()["questions"] == {"forget": 18, "retain": 10, "holdout": 36}
    assert build_probes(dm, 10, None, seed=3).qa["retain"] == probes.qa["retain"]  # seeded
    assert len(probes.member_texts) == len(probes.member_groups) == 3 * (2 + 6)  # notes + QA texts per patient
    assert set(probes.member_groups) == set(dm.parts["forget"])
    qa = QAPair("mrn", "What is the MRN of Ada?", "The MRN of Ada is 1234567.",
                "Ada is registered under number 1234567.", ("The MRN of Ada is 7654321.", "Ada is registered under "
                                                            "number 1111111."))
    onto_paraphrase, n = perturbed_onto(qa, qa.paraphrased_answer)
    assert onto_paraphrase == ("Ada is registered under number 7654321.", "Ada is registered under number 1111111.")
    assert n == 1  # the second already follows the paraphrase
    onto_answer, n = perturbed_onto(qa, qa.answer)
    assert onto_answer == ("The MRN of Ada is 7654321.", "The MRN of Ada is 1111111.") and n == 1
    with pytest.raises(ValueError):
        perturbed_onto(qa, "another text")


# --- quantization ---------------------------------------------------------------------------------------------------
def test_int4_round_to_nearest_of_a_small_linear_matches_a_hand_computation():
    torch.manual_seed(0)
    wrapper = nn.Module()
    wrapper.lm = nn.Sequential(nn.Linear(64, 3, bias=False), nn.Linear(3, 2))
    quantized = quantize_model(wrapper, "int4", group_size=32, module="lm", skip=("lm.1",))
    w = wrapper.lm[0].weight.detach()
    groups = w.reshape(3, 2, 32)
    scale = groups.abs().amax(-1, keepdim=True) / 7.5  # symmetric: max|w| / ((q_max - q_min) / 2), 4 bits
    expected = (torch.clamp(torch.round(groups / scale), -8, 7) * scale).reshape(3, 64)
    torch.testing.assert_close(quantized.lm[0].weight, expected, atol=1e-6, rtol=1e-5)
    assert torch.equal(quantized.lm[1].weight, wrapper.lm[1].weight)  # skipped
    assert torch.equal(wrapper.lm[0].weight, w)  # the input is not modified


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_language_model_still_generates(tiny_lm, scheme):
    before = {k: v.clone() for k, v in tiny_lm.state_dict().items()}
    quantized = quantize_lm(tiny_lm, scheme)
    lm = quantized.lm
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # still tied
    torch.testing.assert_close(lm.model.embed_tokens.weight, tiny_lm.lm.model.embed_tokens.weight)  # head kept
    q_proj = lm.model.layers[0].self_attn.q_proj.weight
    if scheme == "int4":
        assert not torch.equal(q_proj, tiny_lm.lm.model.layers[0].self_attn.q_proj.weight)
        assert torch.unique(q_proj[0, :32]).numel() <= 16  # 4-bit: at most 16 levels per group
    else:
        assert "Int8" in type(q_proj).__name__  # torchao's int8 weights
    prompts = [qa_prompt("What is the medical record number of Ada Abbott?"), "Admission note. Patient"]
    answers = greedy_generate(quantized, prompts, max_new_tokens=8)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    nll, count, _ = score_texts(quantized, ["", ""], ["Admission note.", "Discharge summary."])
    assert torch.isfinite(nll).all() and (count > 0).all()
    assert all(torch.equal(v, tiny_lm.state_dict()[k]) for k, v in before.items())  # original untouched
    if scheme == "int4":
        head = quantize_lm(tiny_lm, "int4", quantize_head=True).lm
        assert not torch.equal(head.model.embed_tokens.weight, tiny_lm.lm.model.embed_tokens.weight)


def test_evaluate_lm_on_the_tiny_model(tiny_lm):
    probes = build_probes(tiny_lm_datamodule(), retain_questions=12, holdout_questions=12)
    result = evaluate_language_model(tiny_lm, probes, max_new_tokens=16, truth_ratio_base="answer")
    m = result.metrics
    for part in ("forget", "retain", "holdout"):
        assert 0 <= m[part]["probability"] <= 1 and 0 <= m[part]["rouge_l_recall"] <= 1
        assert m[part]["questions"] == len(probes.qa[part]) == len(result.truth_ratios[part])
    assert m["forget"]["perturbed_rewritten"] == 0  # the corpus's perturbed answers follow the answer's wording
    assert 0 <= m["model_utility"] <= 1
    assert set(m["extraction"]) == {"forget", "holdout"} and m["extraction"]["forget"]["patients"] == 3
    assert len(result.member_tokens) == len(probes.member_texts)
    with pytest.raises(ValueError, match="truth_ratio_base"):
        evaluate_language_model(tiny_lm, probes, truth_ratio_base="perturbed")
