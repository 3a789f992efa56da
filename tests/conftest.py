"""Shared fixtures: a tiny synthetic hospital and a tiny trained classifier (built once per session)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

os.environ.setdefault("MEDFORGET_CACHE", str(Path(__file__).parent / ".cache"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_MODEL = [
    "--model.image_width=8",
    "--model.text_hidden=32",
    "--model.vocab_size=256",
    "--model.joint_dim=32",
    "--model.max_length=48",
]
TINY_DATA = ["--data.image_size=32", "--data.batch_size=16"]
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(script: str, name: str) -> ModuleType:
    """``benchmarks/<script>.py`` (not a package) imported as the module ``name``, registered in ``sys.modules`` (so
    its forked or spawned workers find it), with ``benchmarks/`` on ``sys.path`` for its sibling imports."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_hospital(tmp_path_factory) -> Path:
    """Manifest of a 40-patient, 32x32 synthetic hospital."""
    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    root = tmp_path_factory.mktemp("hospital")
    return generate_hospital(root / "h", SyntheticConfig(num_patients=40, image_size=32, max_studies=3, seed=1))


@pytest.fixture(scope="session")
def tiny_datamodule_kwargs(tiny_hospital) -> dict:
    return {"manifest": str(tiny_hospital), "image_size": 32, "batch_size": 16, "seed": 0}


@pytest.fixture(scope="session")
def forget_file(tiny_hospital, tmp_path_factory) -> Path:
    """A forget request of 3 training patients."""
    from medforget.datamodules.dicom_report import DicomReportDataModule
    from medforget.datamodules.splits import sample_forget_request, write_patient_ids

    dm = DicomReportDataModule(str(tiny_hospital), image_size=32, seed=0, cache_rate=0.0)
    dm.setup()
    train_patients = dm.df.loc[dm.indices["train"], "patient_id"]
    return write_patient_ids(sample_forget_request(train_patients, 0.1, seed=0),
                             tmp_path_factory.mktemp("forget") / "forget.txt")


@pytest.fixture(scope="session")
def trained_ckpt(tiny_hospital, tmp_path_factory) -> Path:
    """A tiny FusionClassifier trained for 2 epochs through the real ``train`` CLI."""
    from medforget.commands import train

    out = tmp_path_factory.mktemp("original")
    return train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=2",
                  "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--out={out}"])


@pytest.fixture(scope="session")
def trained_image_ckpt(tiny_hospital, tmp_path_factory) -> Path:
    """A tiny image-only classifier (``--model.modalities image``), for the vision methods as vision methods."""
    from medforget.commands import train

    out = tmp_path_factory.mktemp("original_image")
    return train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--model.modalities=image",
                  "--trainer.max_epochs=2", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                  f"--out={out}"])


@pytest.fixture(scope="session")
def retrained_ckpt(tiny_hospital, forget_file, tmp_path_factory) -> Path:
    """The tiny recipe retrained without the forget request's patients (the audit's reference)."""
    from medforget.commands import train

    out = tmp_path_factory.mktemp("retrained")
    return train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=2",
                  "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                  f"--data.exclude_patients={forget_file}", f"--out={out}"])


@pytest.fixture(scope="session")
def unlearned_ckpt(tiny_hospital, forget_file, trained_ckpt, tmp_path_factory) -> Path:
    """``trained_ckpt`` after one FineTune epoch on the forget request."""
    from medforget.commands import unlearn

    out = tmp_path_factory.mktemp("unlearned")
    return unlearn(["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                    f"--data.manifest={tiny_hospital}", *TINY_DATA, "--trainer.max_epochs=1",
                    "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--out={out}"])
