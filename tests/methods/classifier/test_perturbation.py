"""Seeded image / report perturbations (ForgetMI's perturbed forget set)."""

from __future__ import annotations

import difflib

import numpy as np
import pytest
import torch

from medforget.datamodules.synthetic_reports import write_report
from medforget.methods.classifier._perturbation import (
    DEFAULT_KEYWORDS,
    DEFAULT_REPLACEMENTS,
    ImagePerturbation,
    TextPerturbation,
)


@pytest.fixture(scope="module")
def reports() -> list[str]:
    rng = np.random.default_rng(0)
    return [write_report(int(rng.integers(4)), [], rng) for _ in range(40)]


def _similarity(a: list[str], b: list[str]) -> float:
    ratios = [difflib.SequenceMatcher(None, x.split(), y.split()).ratio() for x, y in zip(a, b, strict=True)]
    return float(np.mean(ratios))


# --- text -----------------------------------------------------------------------------------------------------------
def test_text_is_deterministic_under_a_seed(reports):
    a = TextPerturbation(0.4, seed=3)(reports)
    assert a == TextPerturbation(0.4, seed=3)(reports)
    assert a != TextPerturbation(0.4, seed=4)(reports)
    owned = TextPerturbation(0.4, seed=3)
    first = owned(reports)
    assert owned(reports) != first, "the owned generator advances between calls"
    # a per-call seed gives the same output every time and leaves the owned generator alone
    assert owned(reports, seed=11) == owned(reports, seed=11)
    fresh = TextPerturbation(0.4, seed=3)
    fresh(reports, seed=11)
    assert fresh(reports) == first


def test_text_state_roundtrip(reports):
    p = TextPerturbation(0.4, seed=0)
    p(reports)
    state = p.state_dict()
    expected = p(reports)
    q = TextPerturbation(0.4, seed=99)
    q.load_state_dict(state)
    assert q(reports) == expected


def test_level_zero_is_identity(reports):
    assert TextPerturbation(0.0, seed=0)(reports) == reports
    assert TextPerturbation(0.0)(["  odd   spacing\n\nkept "]) == ["  odd   spacing\n\nkept "]


def test_higher_level_changes_more_words(reports):
    sims = [_similarity(reports, TextPerturbation(level, seed=0)(reports)) for level in (0.1, 0.3, 0.5, 0.9)]
    assert sims == sorted(sims, reverse=True), sims
    assert sims[0] > 0.8 and sims[-1] < 0.5, sims


def test_line_structure_is_kept(reports):
    for before, after in zip(reports, TextPerturbation(0.5, seed=1)(reports), strict=True):
        assert after.count("\n") == before.count("\n")


def test_keywords_are_replaced(reports):
    perturbed = TextPerturbation(1.0, seed=0)(reports)
    keywords = set(DEFAULT_KEYWORDS)
    replacements = {r.lower() for r in DEFAULT_REPLACEMENTS}
    before = [w.strip(".,:;").lower() for t in reports for w in t.split()]
    after = [w.strip(".,:;").lower() for t in perturbed for w in t.split()]
    assert any(w in keywords for w in before)
    assert not any(w in keywords for w in after), "a clinical keyword survived level=1"
    assert any(w in replacements for w in after)
    # punctuation and capitalisation around a keyword are kept
    out = TextPerturbation(1.0, replacements=("finding",), seed=0)(["Edema. (effusion,)"])
    assert out == ["Finding. (finding,)"]
    assert TextPerturbation(1.0, replacements=("[MASK]",), seed=0)(["edema"]) == ["[MASK]"]


def test_word_operations():
    text = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    words = text.split()
    assert TextPerturbation(1.0, operations=("delete",), seed=0)([text]) == [""]
    assert TextPerturbation(1.0, operations=("repeat",), seed=0)([text])[0].split() == [w for w in words for _ in "ab"]
    swapped = TextPerturbation(1.0, operations=("swap",), seed=0)([text])[0].split()
    assert swapped == [w for i in range(0, 10, 2) for w in (words[i + 1], words[i])]
    typos = TextPerturbation(1.0, operations=("typo",), seed=0)([text])[0].split()
    assert len(typos) == len(words) and sum(a != b for a, b in zip(typos, words, strict=True)) >= 8
    assert all(abs(len(a) - len(b)) <= 1 for a, b in zip(typos, words, strict=True))


def test_text_rejects_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        TextPerturbation(1.5)
    with pytest.raises(ValueError, match="operations"):
        TextPerturbation(0.4, operations=("shuffle",))
    with pytest.raises(TypeError, match="list"):
        TextPerturbation(0.4)("a single string")


# --- image ----------------------------------------------------------------------------------------------------------
def test_image_noise_std_is_sigma_before_clipping():
    images = torch.full((8, 1, 64, 64), 0.5)
    noisy = ImagePerturbation(sigma=0.1, clip=None, seed=0)(images)
    noise = noisy - images
    assert abs(float(noise.std()) - 0.1) < 0.003
    assert abs(float(noise.mean())) < 0.003
    assert torch.equal(images, torch.full((8, 1, 64, 64), 0.5)), "input modified"


def test_image_output_within_clip_range():
    images = torch.rand(4, 1, 32, 32)
    noisy = ImagePerturbation(sigma=0.5, clip=(0.0, 1.0), seed=0)(images)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert (noisy == 0.0).any() and (noisy == 1.0).any()
    assert torch.equal(ImagePerturbation(sigma=0.0)(images), images)


def test_image_is_deterministic_under_a_seed():
    images = torch.rand(2, 1, 16, 16)
    a = ImagePerturbation(0.1, seed=5)(images)
    assert torch.equal(a, ImagePerturbation(0.1, seed=5)(images))
    assert not torch.equal(a, ImagePerturbation(0.1, seed=6)(images))
    owned = ImagePerturbation(0.1, seed=5)
    assert torch.equal(owned(images), a) and not torch.equal(owned(images), a)
    assert torch.equal(owned(images, seed=1), ImagePerturbation(0.1, seed=0)(images, seed=1))
    state = owned.state_dict()
    expected = owned(images)
    other = ImagePerturbation(0.1, seed=123)
    other.load_state_dict(state)
    assert torch.equal(other(images), expected)


def test_image_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sigma"):
        ImagePerturbation(sigma=-1.0)
    with pytest.raises(ValueError, match="clip"):
        ImagePerturbation(clip=(1.0, 0.0))
    with pytest.raises(TypeError, match="floating"):
        ImagePerturbation()(torch.zeros(2, 2, dtype=torch.long))
