"""What every LightningCLI verb shares: the verbs and their help (:data:`VERBS`), the Trainer defaults, the
resume point, the run flags (``--out``, ``--overwrite``, ``--ckpt_path``) and ``--method`` resolution with a
did-you-mean error."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from medforget.core.checkpoint import check_resume_checkpoint
from medforget.core.console import StageLine, interactive
from medforget.core.registry import Registry
from medforget.core.runlock import RunLock

log = logging.getLogger("medforget")


VERBS = {
    "synth": "write a synthetic hospital (DICOM images + reports + manifest.csv)",
    "train": "fit a fusion classifier (the original model, or the retrained reference with --data.exclude_patients)",
    "unlearn": "remove the patients of a forget request from a trained checkpoint (--method, --ckpt, --forget)",
    "tune": "search an unlearning method's lr, epochs and weights with Optuna on validation data only (resumable "
            "SQLite study under --out; writes best.yaml, a ready unlearn --config)",
    "evaluate": "the audit: original / unlearned / retrained on forget, retain and test patients, membership "
                "attacks, quantization and relearning attacks, pass/fail (audit.json, audit.md, audit.html)",
    "demo": "synth -> train -> retrain -> unlearn -> evaluate (the audit) on the synthetic hospital, with timings",
    "train-lm": "fit a clinical-notes language model (the original, or the retain-only reference with "
                "--data.exclude_forget true)",
    "unlearn-lm": "remove the patients of a forget request from a clinical-notes language model (--method, --ckpt, "
                  "--forget)",
    "evaluate-lm": "the language-model audit: original / unlearned / retain-only models on TOFU metrics, identifier "
                   "extraction, membership attacks and the quantization attack (lm_audit.json, .md, .html)",
    "verify": "the chain of custody: recompute the SHA-256 of an audit's files and of the checkpoints it audited; "
              "non-zero exit naming any file that changed",
}


TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 25, "log_every_n_steps": 10, "enable_model_summary": False}


def quiet_lightning() -> None:
    for pattern in (".*does not have many workers.*", ".*number of training batches.*", ".*LeafSpec.*",
                    ".*`isinstance.*treespec.*", ".*Checkpoint directory.*exists and is not empty.*",
                    ".*LightningCLI's args parameter.*", ".*tensorboardX.*",
                    ".*overridden `on_before_batch_transfer`.*"):
        warnings.filterwarnings("ignore", pattern)


RESUME_FILENAME = "latest-{epoch}-{step}"


def _rng_state() -> dict[str, Any]:
    """torch, numpy and Python random states, in types that ``torch.load(weights_only=True)`` reads back."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def _set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _train_samplers(trainer: Any) -> list[Any]:
    """The samplers of the training loaders (one, or the forget and retain loaders of an unlearning run)."""
    loaders = getattr(trainer, "train_dataloader", None) if trainer is not None else None
    loaders = list(loaders.values()) if isinstance(loaders, dict) else (
        list(loaders) if isinstance(loaders, (list, tuple)) else [loaders])
    return [getattr(loader, "sampler", None) for loader in loaders if loader is not None]


class ResumePoint(ModelCheckpoint):
    """The most recent epoch's state (``latest-*.ckpt``, linked as ``last.ckpt``): what ``--ckpt_path last``
    resumes from. Its own state key, so it never collides with the configurable ``checkpoint`` callback.

    It also keeps the random state at the end of the epoch (torch, numpy, Python; and the shuffling generators of the
    training loaders) and restores it when the next epoch starts after a resume, so that a resumed run draws the same
    data order and dropout as an uninterrupted one and exports the same model."""

    def __init__(self, dirpath: str | Path) -> None:
        super().__init__(dirpath=dirpath, filename=RESUME_FILENAME, save_top_k=1, save_last="link",
                         enable_version_counter=False)
        self._trainer: Any = None
        self._restore: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "medforget.ResumePoint"

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        generators = [getattr(s, "generator", None) for s in _train_samplers(self._trainer)]
        return {**super().state_dict(), "rng": _rng_state(),
                "generators": [g.get_state() if isinstance(g, torch.Generator) else None for g in generators]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self._restore = {k: state_dict.pop(k) for k in ("rng", "generators") if k in state_dict}
        super().load_state_dict(state_dict)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        restore, self._restore = self._restore, None
        if not restore:
            return
        if "rng" in restore:
            _set_rng_state(restore["rng"])
        samplers = _train_samplers(trainer)
        if len(samplers) == len(restore.get("generators", [])):
            for sampler, state in zip(samplers, restore["generators"], strict=True):
                if state is not None and isinstance(getattr(sampler, "generator", None), torch.Generator):
                    sampler.generator.set_state(state)


class RunCLI(LightningCLI):
    """Shared flags of the verbs that fit something: ``--out``, ``--overwrite``, ``--ckpt_path``, checkpoints.

    Besides the configurable ``checkpoint`` callback, every run keeps its latest state in ``<out>/checkpoints``
    (``latest-*.ckpt``, linked as ``last.ckpt`` after every epoch), so ``--ckpt_path last`` resumes an interrupted run.
    """

    default_out = "runs/original"
    verb = "train"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--out", type=str, default=self.default_out,
                            help="Run directory: model.ckpt (exported model), checkpoints/ (for resuming), logs.")
        parser.add_argument("--overwrite", type=bool, default=False, help="Replace an existing <out>/model.ckpt.")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume an interrupted run: 'last' or a Lightning checkpoint path.")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": False, "checkpoint.save_top_k": 0})
        parser.link_arguments("out", "trainer.default_root_dir")
        parser.link_arguments("out", "checkpoint.dirpath", compute_fn=lambda out: str(Path(out) / "checkpoints"))

    def before_instantiate_classes(self) -> None:
        # one run per --out: a second one is refused here, before anything is read or written; the verb's function
        # (decorated with releasing_locks) releases it when it returns or raises
        RunLock(self.config.out, self.verb).acquire()
        target = Path(self.config.out) / "model.ckpt"
        if target.exists() and not self.config.overwrite and self.config.ckpt_path is None:
            raise FileExistsError(f"{target} exists; pass --overwrite true to replace it (or choose another --out)")

    def resume_path(self) -> str | None:
        """``--ckpt_path``, checked first when it names a file (``last``: ``<out>/checkpoints/last.ckpt``), so that a
        truncated, tampered or foreign checkpoint is refused naming the file (never unpickled with code)."""
        path = self.config.ckpt_path
        if path in (None, "best", "hpc", "registry"):
            return path
        file = Path(self.config.out) / "checkpoints" / "last.ckpt" if path == "last" else Path(path)
        if path == "last" and not file.exists():
            return path  # nothing to resume yet: Lightning warns and starts from the first epoch
        check_resume_checkpoint(file, self.model)
        return path

    def instantiate_trainer(self, **kwargs: Any):
        config = self._get(self.config_init, "trainer", default={}) or {}
        callbacks = kwargs.pop("callbacks", None) or config.get("callbacks") or []
        callbacks = [*(callbacks if isinstance(callbacks, list) else [callbacks])]
        if config.get("logger") in (None, True):
            # CSV by default (<out>/lightning_logs/version_N/metrics.csv), whatever else is installed;
            # --trainer.logger TensorBoardLogger / MLFlowLogger (pip install medforget[tensorboard|mlflow]) or false
            kwargs["logger"] = CSVLogger(save_dir=self.config.out, name="lightning_logs")
        if config.get("enable_progress_bar") is None:  # not set: a bar on a terminal, one line in a log file
            kwargs["enable_progress_bar"] = interactive()
            if not kwargs["enable_progress_bar"]:
                callbacks.append(StageLine(str(getattr(self.parser, "prog", "fit"))))
        kwargs["callbacks"] = callbacks
        if config.get("enable_checkpointing", True) is not False and not config.get("fast_dev_run"):
            # the resume point: the most recent epoch, linked as last.ckpt (Lightning 2.6 only writes last.ckpt in
            # an epoch in which another checkpoint was written, so the selection callback alone would not do)
            latest = ResumePoint(Path(self.config.out) / "checkpoints")
            kwargs["callbacks"] = [*callbacks, latest]
            trainer = super().instantiate_trainer(**kwargs)
            # last: the resume point must be written after the selection callback has saved this epoch's best, or it
            # records a best-epoch file that the selection callback deletes next, and a resumed run cannot export
            trainer.callbacks = [c for c in trainer.callbacks if c is not latest] + [latest]
            return trainer
        return super().instantiate_trainer(**kwargs)


def method_args(args: list[str] | None, default: str, registry: Registry[Any] | None = None) -> list[str]:
    """``--method X`` is ``--model X``; without either, ``--model default``.

    With ``registry``, a bare name (no dot, no path, no inline YAML) must be registered: a typo stops here with
    ``unknown method 'FineTun'; did you mean 'FineTune'?`` and the registered names, before LightningCLI would print
    its usage and "Expected a dot import path string"."""
    args = list(sys.argv[1:] if args is None else args)
    args = ["--model" if a == "--method" else a.replace("--method=", "--model=") for a in args]
    if not any(a == "--model" or a.startswith("--model=") for a in args) and not any(
        a in ("-h", "--help") for a in args
    ):
        args = ["--model", default, *args]
    if registry is not None:
        for i, arg in enumerate(args):
            value = arg.partition("=")[2] if arg.startswith("--model=") else (
                args[i + 1] if arg == "--model" and i + 1 < len(args) else None)
            if value and value.isidentifier():  # a class name, not a dotted class path, a YAML file or inline YAML
                registry.get(value)
    return args
