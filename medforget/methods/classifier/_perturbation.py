"""Seeded input perturbations: Gaussian image noise and clinical-report text corruption (ForgetMI's D̃_f).

Both own a random generator seeded at construction, so a run is reproducible under its seed; passing ``seed=`` to a
call uses a fresh generator for that call only (the owned one does not advance). Text is perturbed as raw report
strings, *before* tokenization.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_KEYWORDS: tuple[str, ...] = (
    "edema", "oedema", "congestion", "congested", "interstitial", "alveolar", "kerley", "cephalization",
    "opacities", "opacity", "opacification", "consolidation", "consolidations", "effusion", "effusions",
    "cardiomegaly", "vascular", "vasculature", "engorgement", "engorged", "airspace", "perihilar", "septal",
    "peribronchial", "cuffing", "redistribution", "hypertension", "venous", "markings", "thickening", "hilar",
    "pulmonary", "bat-wing", "atelectasis", "pneumothorax", "fluid", "overload", "severe", "moderate", "mild",
    "diffuse", "bilateral",
)
DEFAULT_REPLACEMENTS: tuple[str, ...] = (
    "finding", "area", "region", "pattern", "appearance", "change", "structure", "process", "feature", "aspect",
)
WORD_OPERATIONS: tuple[str, ...] = ("delete", "repeat", "swap", "typo")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.DOTALL)


class ImagePerturbation:
    """Add ``N(0, sigma^2)`` noise to images, then clip to the valid range.

    The noise is drawn on the CPU from a ``torch.Generator`` and moved to the images' device, so the same seed
    gives the same noise on any accelerator.

    Args:
        sigma: Noise standard deviation (0 leaves the images unchanged apart from clipping).
        clip: ``(low, high)`` valid range of the images (``[0, 1]`` for medforget batches); ``None``: no clipping.
        seed: Seed of the owned generator.
    """

    def __init__(self, sigma: float = 0.1, clip: tuple[float, float] | None = (0.0, 1.0), seed: int = 0) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if clip is not None and not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
        self.sigma = float(sigma)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """A noisy copy of ``images`` (any shape, floating point); the input is not modified."""
        if not images.is_floating_point():
            raise TypeError(f"ImagePerturbation needs floating-point images, got {images.dtype}")
        generator = self.generator if seed is None else torch.Generator().manual_seed(int(seed))
        noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
        out = images + (self.sigma * noise).to(device=images.device, dtype=images.dtype)
        if self.clip is not None:
            out = out.clamp(*self.clip)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class TextPerturbation:
    """Corrupt free-text reports word by word (whitespace-separated; line breaks are kept).

    Each word is selected with probability ``level``. A selected clinical keyword (matched case-insensitively,
    ignoring surrounding punctuation) is replaced by a neutral word from ``replacements`` (include e.g.
    ``"[MASK]"`` there to mask instead); any other selected word undergoes one of ``operations``: ``delete``,
    ``repeat`` (duplicated), ``swap`` (with the next word, unless that is a keyword, which gets its own draw) or
    ``typo`` (one character swapped, dropped, doubled or substituted). ``level=0`` returns the texts unchanged.

    Args:
        level: Probability that a word is perturbed (0.3-0.5 in ForgetMI).
        keywords: Clinical vocabulary that gets replaced.
        replacements: Neutral words that replace keywords.
        operations: Operations applied to selected non-keyword words (subset of delete, repeat, swap, typo).
        seed: Seed of the owned generator.
    """

    def __init__(
        self,
        level: float = 0.4,
        keywords: Sequence[str] = DEFAULT_KEYWORDS,
        replacements: Sequence[str] = DEFAULT_REPLACEMENTS,
        operations: Sequence[str] = WORD_OPERATIONS,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be in [0, 1], got {level}")
        unknown = set(operations) - set(WORD_OPERATIONS)
        if unknown or not operations:
            raise ValueError(f"operations must be a non-empty subset of {WORD_OPERATIONS}, got {tuple(operations)}")
        if not replacements:
            raise ValueError("replacements must not be empty")
        self.level = float(level)
        self.keywords = frozenset(k.lower() for k in keywords)
        self.replacements = tuple(replacements)
        self.operations = tuple(operations)
        self.rng = random.Random(seed)

    def __call__(self, texts: Sequence[str], seed: int | None = None) -> list[str]:
        """Perturbed copies of ``texts`` (a list of report strings, e.g. a batch's ``report`` entry)."""
        if isinstance(texts, str):
            raise TypeError("TextPerturbation takes a list of strings; wrap a single text in a list")
        rng = self.rng if seed is None else random.Random(seed)
        return [self.perturb(text, rng) for text in texts]

    def is_keyword(self, word: str) -> bool:
        return _CORE.match(word).group(2).lower() in self.keywords

    def perturb(self, text: str, rng: random.Random | None = None) -> str:
        """One perturbed text (line breaks kept; runs of spaces inside a line become single spaces)."""
        rng = self.rng if rng is None else rng
        if self.level == 0.0:
            return text
        return "\n".join(" ".join(self._perturb_words(line.split(), rng)) for line in text.split("\n"))

    def _perturb_words(self, words: list[str], rng: random.Random) -> list[str]:
        out: list[str] = []
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            if rng.random() >= self.level:
                out.append(word)
            elif self.is_keyword(word):
                out.append(self._replace(word, rng))
            else:
                op = rng.choice(self.operations)
                if op == "repeat":
                    out += [word, word]
                elif op == "swap" and i < len(words) and not self.is_keyword(words[i]):
                    out += [words[i], word]
                    i += 1
                elif op == "typo" or op == "swap":  # no neighbour to swap with (last word, or a keyword): typo
                    out.append(_typo(word, rng))
                # "delete": drop the word
        return out

    def _replace(self, word: str, rng: random.Random) -> str:
        prefix, core, suffix = _CORE.match(word).groups()
        new = rng.choice(self.replacements)
        if core[:1].isupper() and new.isalpha():
            new = new.upper() if core.isupper() and len(core) > 1 else new.capitalize()
        return f"{prefix}{new}{suffix}"

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


def _typo(word: str, rng: random.Random) -> str:
    """One character-level edit inside the alphabetic core of ``word`` (punctuation around it is kept)."""
    prefix, core, suffix = _CORE.match(word).groups()
    if len(core) < 2:
        return word
    i = rng.randrange(len(core) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap two neighbouring characters
        core = core[:i] + core[i + 1] + core[i] + core[i + 2:]
    elif op == 1:  # drop one
        core = core[:i] + core[i + 1:]
    elif op == 2:  # double one
        core = core[:i] + core[i] + core[i:]
    else:  # substitute one with a different letter
        core = core[:i] + rng.choice(_LETTERS.replace(core[i].lower(), "")) + core[i + 1:]
    return f"{prefix}{core}{suffix}"
