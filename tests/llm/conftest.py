"""Tiny language-model fixtures: a 30-patient corpus, a small Llama trained through the real ``train-lm`` CLI, and
the retain-only model (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_LM_DATA = ["--data.num_patients=30", "--data.forget_fraction=0.1", "--data.holdout_fraction=0.2",
                "--data.batch_size=16"]
TINY_LM_MODEL = ["--model.hidden_size=32", "--model.num_layers=2", "--model.num_heads=2", "--model.vocab_size=384",
                 "--model.max_length=96", "--model.lr=5e-3"]
TINY_LM_TRAINER = ["--trainer.max_epochs=6", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def tiny_lm_datamodule(**overrides):
    """The datamodule of the tiny fixtures (same corpus and split)."""
    from medforget.datamodules.lm import ClinicalNotesDataModule

    kwargs = {"num_patients": 30, "forget_fraction": 0.1, "holdout_fraction": 0.2, "batch_size": 16}
    return ClinicalNotesDataModule(**{**kwargs, **overrides})


@pytest.fixture(scope="session")
def tiny_lm_ckpt(tmp_path_factory) -> Path:
    """The original tiny clinical LM (trained on forget + retain patients)."""
    from medforget.commands import train_lm

    out = tmp_path_factory.mktemp("lm_original")
    return train_lm([*TINY_LM_DATA, *TINY_LM_MODEL, *TINY_LM_TRAINER, f"--out={out}"])


@pytest.fixture(scope="session")
def tiny_retain_lm_ckpt(tmp_path_factory) -> Path:
    """The tiny retain-only reference (same recipe, without the forget patients)."""
    from medforget.commands import train_lm

    out = tmp_path_factory.mktemp("lm_retain")
    return train_lm([*TINY_LM_DATA, *TINY_LM_MODEL, *TINY_LM_TRAINER, "--data.exclude_forget=true", f"--out={out}"])
