"""Quiet logs: progress bars only on a terminal (one line per stage otherwise), and Lightning's loggers: CSV by
default (``<out>/lightning_logs/version_N/metrics.csv``), another by ``--trainer.logger``."""

from __future__ import annotations

import pandas as pd
import pytest
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger

import medforget.commands.base as cli
from medforget.commands import train
from medforget.commands.classifier import TrainCLI
from medforget.core.console import StageLine, interactive
from medforget.core.runlock import releasing_locks
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.systems.classifier import FusionClassifier
from tests.conftest import TINY_DATA, TINY_MODEL


def test_train_writes_csv_metrics(trained_ckpt):
    """The session's tiny train run (2 epochs) logged its metrics with the default CSV logger."""
    metrics = trained_ckpt.parent / "lightning_logs" / "version_0" / "metrics.csv"
    assert metrics.is_file()
    df = pd.read_csv(metrics)
    for column in ("epoch", "train/loss", "val/loss", "val/fused_auc", "val/fused_f1"):
        assert column in df.columns
    assert sorted(df.loc[df["train/loss"].notna(), "epoch"].unique()) == [0, 1]
    assert df["val/fused_auc"].dropna().between(0, 1).all()
    assert (trained_ckpt.parent / "lightning_logs" / "version_0" / "hparams.yaml").is_file()


@releasing_locks  # the CLI takes --out's run lock; a verb's function releases it, so does this helper
def _cli(tiny_hospital, tmp_path, *extra: str) -> TrainCLI:
    return TrainCLI(FusionClassifier, DicomReportDataModule, run=False, trainer_defaults=cli.TRAINER_DEFAULTS,
                        args=[f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL,
                              "--trainer.accelerator=cpu", f"--out={tmp_path / 'run'}", *extra],
                        save_config_kwargs={"overwrite": True}, parser_kwargs={"prog": "medforget train"})


def test_progress_bar_on_a_terminal_only(tiny_hospital, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "interactive", lambda: True)
    trainer = _cli(tiny_hospital, tmp_path).trainer
    assert isinstance(trainer.progress_bar_callback, ProgressBar)  # tqdm or rich
    assert not any(isinstance(c, StageLine) for c in trainer.callbacks)
    monkeypatch.setattr(cli, "interactive", lambda: False)
    trainer = _cli(tiny_hospital, tmp_path).trainer
    assert trainer.progress_bar_callback is None
    assert sum(isinstance(c, StageLine) for c in trainer.callbacks) == 1
    monkeypatch.setattr(cli, "interactive", lambda: False)  # an explicit flag wins
    assert _cli(tiny_hospital, tmp_path, "--trainer.enable_progress_bar=true").trainer.progress_bar_callback


def test_logger_flags(tiny_hospital, tmp_path):
    logger = _cli(tiny_hospital, tmp_path).trainer.logger
    assert isinstance(logger, CSVLogger) and logger.save_dir == str(tmp_path / "run")
    assert _cli(tiny_hospital, tmp_path, "--trainer.logger=false").trainer.logger is None
    other = _cli(tiny_hospital, tmp_path, "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path / 'x'}",
                 "--trainer.logger.name=mine").trainer.logger
    assert isinstance(other, CSVLogger) and other.log_dir.startswith(str(tmp_path / "x" / "mine"))


def test_tensorboard_logger_by_flag(tiny_hospital, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an extra: pip install medforget[tensorboard]")
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = _cli(tiny_hospital, tmp_path, "--trainer.logger=TensorBoardLogger",
                  f"--trainer.logger.save_dir={tmp_path / 'tb'}").trainer.logger
    assert isinstance(logger, TensorBoardLogger)


def test_train_in_a_log_file_prints_one_line(tiny_hospital, tmp_path, capfd, monkeypatch):
    """stderr is not a terminal here: no carriage-return bar, one summary line for the fit."""
    monkeypatch.delenv("MEDFORGET_PROGRESS", raising=False)
    assert not interactive()
    train([f"--data.manifest={tiny_hospital}", *TINY_DATA, *TINY_MODEL, "--trainer.max_epochs=1",
               "--trainer.accelerator=cpu", f"--out={tmp_path / 'run'}"])
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("medforget train: ")]
    assert len(lines) == 1 and "1 epoch(s)" in lines[0] and "val/fused_auc" in lines[0]
    assert (tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv").is_file()


@pytest.mark.parametrize("terminal", [True, False])
def test_monai_cache_bar_only_on_a_terminal(tiny_datamodule_kwargs, monkeypatch, capsys, terminal):
    import medforget.datamodules.dicom_report as dicom_report

    seen = {}

    class Recording(dicom_report.CacheDataset):
        def __init__(self, *args, progress: bool = True, **kwargs):
            seen["progress"] = progress
            super().__init__(*args, progress=False, **kwargs)

    monkeypatch.setattr(dicom_report, "CacheDataset", Recording)
    monkeypatch.setattr(dicom_report, "PROGRESS_MIN_ITEMS", 0)
    monkeypatch.setattr(dicom_report, "interactive", lambda: terminal)
    DicomReportDataModule(**tiny_datamodule_kwargs).setup()
    assert seen["progress"] is terminal
    lines = [line for line in capsys.readouterr().err.splitlines() if "decoding and caching" in line]
    assert len(lines) == (0 if terminal else 1)


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), ("off", False), ("yes", True)])
def test_progress_can_be_forced(monkeypatch, value, expected):
    monkeypatch.setenv("MEDFORGET_PROGRESS", value)
    assert interactive() is expected
