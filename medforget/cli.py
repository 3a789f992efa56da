"""``python -m medforget <verb>``: synth | train | unlearn | tune | evaluate | demo, and for clinical-notes language
models train-lm | unlearn-lm | evaluate-lm.

``train``, ``unlearn``, ``train-lm`` and ``unlearn-lm`` are LightningCLIs: every typed ``__init__`` argument of
the model, the datamodule and the Trainer is a flag and a YAML key (``--config configs/...yaml``,
``--print_config``), and the resolved config is saved next to each run. ``synth``, ``evaluate``, ``evaluate-lm`` and
``demo`` use jsonargparse, the parser LightningCLI is built on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger

import medforget
from medforget.checkpoint import check_resume_checkpoint, export_classifier, sha256_file, write_sidecar
from medforget.classifier import FusionClassifier
from medforget.console import StageLine, interactive
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.runlock import RunLock, releasing_locks
from medforget.unlearning import UnlearningMethod
from medforget.unlearning.selection import SCORE as SELECTION_SCORE

log = logging.getLogger("medforget")

TRAINER_DEFAULTS: dict[str, Any] = {"max_epochs": 25, "log_every_n_steps": 10, "enable_model_summary": False}
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


def _quiet_lightning() -> None:
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


class _RunCLI(LightningCLI):
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


class TrainCLI(_RunCLI):
    default_out = "runs/original"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.channels", "model.image_channels")  # one flag: the data's and the encoder's


class UnlearnCLI(_RunCLI):
    default_out = "runs/unlearned"
    verb = "unlearn"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt", type=str, help="Trained classifier checkpoint to unlearn from (never modified).")
        parser.add_argument("--forget", type=str, help="Forget request: a file with one patient ID per line.")
        parser.link_arguments("ckpt", "model.init_args.ckpt")
        parser.link_arguments("forget", "data.forget")
        parser.set_defaults({"data.mode": "unlearn", "trainer.max_epochs": 3})
        # checkpoint selection on the validation parts (medforget.unlearning.selection); the best epoch is exported
        parser.set_defaults({"checkpoint.monitor": SELECTION_SCORE, "checkpoint.mode": "min",
                             "checkpoint.save_top_k": 1, "checkpoint.filename": "best-{epoch}"})

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        for flag in ("ckpt", "forget"):
            if not self.config.get(flag):
                raise ValueError(f"medforget unlearn needs --{flag}")


def _data_provenance(dm: DicomReportDataModule) -> dict[str, Any]:
    return {
        "manifest": str(dm.manifest_path),
        "manifest_sha256": dm.dataset_hash(),
        "seed": dm.seed,
        "val_fraction": dm.val_fraction,
        "test_fraction": dm.test_fraction,
        "image_size": dm.image_size,
        "channels": dm.channels,
        "batch_size": dm.batch_size,
        "parts": dm.summary(),
    }


@releasing_locks
def train(args: list[str] | None = None) -> Path:
    """``medforget train``: fit a FusionClassifier and export ``<out>/model.ckpt``."""
    _quiet_lightning()
    cli = TrainCLI(
        FusionClassifier, DicomReportDataModule, args=args, run=False, seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget train", "description": VERBS["train"]},
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    seconds = time.perf_counter() - start
    target = Path(cli.config.out) / "model.ckpt"
    if cli.trainer.is_global_zero:
        dm = cli.datamodule
        export_classifier(cli.model, target, overwrite=True, provenance={
            "kind": "retrained" if dm.exclude_patients else "original",
            "medforget_version": medforget.__version__,
            "split_fingerprint": dm.split_fingerprint,
            "excluded_patients": dm.summary().get("excluded", {}).get("patients", 0),
            "data": _data_provenance(dm),
            "epochs": cli.trainer.current_epoch,
            "fit_seconds": seconds,
        })
    return target


class _LMRunCLI(_RunCLI):
    """The language-model verbs' extra flag: ``--export_hf DIR``, a Hugging Face copy of the exported model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--export_hf", type=str | None, default=None,
                            help="Also write the exported model (LoRA adapters merged) as a save_pretrained model + "
                                 "tokenizer directory that transformers' Auto classes load offline (replaced only "
                                 "with --overwrite true).")

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        target = self.config.get("export_hf")
        if target and Path(target).exists() and not self.config.overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite true to replace it (or choose another "
                                  "--export_hf)")


def _export_lm(cli: LightningCLI, model: Any, provenance: dict[str, Any]) -> Path:
    """``<out>/model.ckpt`` and, with ``--export_hf DIR``, the Hugging Face directory (both merged, on rank 0)."""
    from medforget.llm.system import export_hf, export_lm

    if model.lora is not None:
        provenance = {**provenance, "lora": {**model.lora.as_dict(), "merged": True}}
    target = export_lm(model, Path(cli.config.out) / "model.ckpt", overwrite=True, provenance=provenance)
    if cli.config.get("export_hf"):
        export_hf(model, cli.config.export_hf, overwrite=bool(cli.config.overwrite), provenance=provenance)
        log.info("wrote %s (Hugging Face save_pretrained directory)", cli.config.export_hf)
    return target


def _lm_data_provenance(dm: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The datamodule's settings (or ``base``: the original model's) without the request's file name, and the forget
    set (:meth:`~medforget.datamodules.lm.ClinicalNotesDataModule.forget_provenance`)."""
    if base is None:  # a training run: its own settings
        base = {k: v for k, v in dm.hparams.items() if k not in ("num_workers", "mode", "forget_fraction")}
    return {**{k: v for k, v in base.items() if k != "forget"}, **dm.forget_provenance()}


class TrainLMCLI(_LMRunCLI):
    default_out = "runs/lm"
    verb = "train-lm"


@releasing_locks
def train_lm(args: list[str] | None = None) -> Path:
    """``medforget train-lm``: fit a :class:`~medforget.llm.system.ClinicalLM` and export ``<out>/model.ckpt``
    (and, with ``--export_hf DIR``, a Hugging Face directory)."""
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.llm.system import ClinicalLM

    _quiet_lightning()
    cli = TrainLMCLI(
        ClinicalLM, ClinicalNotesDataModule, args=args, run=False, seed_everything_default=0,
        trainer_defaults={**TRAINER_DEFAULTS, "max_epochs": 30}, save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget train-lm", "description": VERBS["train-lm"]},
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    seconds = time.perf_counter() - start
    target = Path(cli.config.out) / "model.ckpt"
    if cli.trainer.is_global_zero:
        dm = cli.datamodule
        _export_lm(cli, cli.model, provenance={
            "kind": "retain-only" if dm.exclude_forget else "original",
            "medforget_version": medforget.__version__,
            "data": _lm_data_provenance(dm),
            "parts": dm.summary(),
            "epochs": cli.trainer.current_epoch,
            "fit_seconds": seconds,
        })
    return target


class UnlearnLMCLI(_LMRunCLI):
    default_out = "runs/lm_unlearned"
    verb = "unlearn-lm"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt", type=str, help="Trained language-model checkpoint (never modified).")
        parser.add_argument("--forget", type=str | None, default=None,
                            help="Forget request: a file with one patient ID per line (as for unlearn); without it, "
                                 "--data.forget_fraction of the patients (default 0.05).")
        parser.link_arguments("ckpt", "model.init_args.ckpt")
        parser.link_arguments("forget", "data.forget")
        parser.set_defaults({"data.mode": "unlearn", "trainer.max_epochs": 5, "trainer.check_val_every_n_epoch": 1})

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        if not self.config.get("ckpt"):
            raise ValueError("medforget unlearn-lm needs --ckpt")


#: Data settings that must equal the trained model's for an unlearning run (the forget fraction may differ: forget
#: sets are nested, so one original model serves 1%, 5% and 10% requests).
LM_DATA_IDENTITY = ("corpus", "num_patients", "corpus_seed", "split_seed", "holdout_fraction")


def check_lm_data(provenance: dict[str, Any], datamodule: Any, path: str, forget_set: bool = True) -> None:
    """Refuse to unlearn or evaluate with a corpus or split other than the one the model was trained on; with
    ``forget_set``, also an unlearned or retain-only model whose forget set differs from the datamodule's when
    either was given as a patient-ID request (fraction-based forget sets are nested and checked by their fraction)."""
    trained = provenance.get("data", {})
    for key in LM_DATA_IDENTITY:
        if key in trained and trained[key] != getattr(datamodule, key):
            raise ValueError(f"--data.{key}={getattr(datamodule, key)!r} differs from the value the model in {path} "
                             f"was trained with ({trained[key]!r}); pass the training run's data settings")
    unlearned = provenance.get("kind") == "unlearned"
    if not forget_set or not (unlearned or trained.get("exclude_forget")):
        return
    if datamodule.forget is None and trained.get("forget_by") != "patient_ids":
        return
    if trained.get("forget_fingerprint") != datamodule.forget_fingerprint:
        how = ("a forget request of patient IDs" if trained.get("forget_by") == "patient_ids" else
               "a forget fraction" if trained.get("forget_by") == "fraction" else "a forget set of unrecorded identity")
        given = ("--forget FILE" if trained.get("forget_by") == "patient_ids" else
                 f"--data.forget_fraction {trained['forget_fraction']}" if "forget_fraction" in trained else "it")
        raise ValueError(f"{path} was {'unlearned from' if unlearned else 'trained without'} another forget set "
                         f"({how}, {trained.get('forget_patients', '?')} patients) than the one given here "
                         f"({'--forget' if datamodule.forget else '--data.forget_fraction'}, "
                         f"{len(datamodule.parts['forget'])} patients); pass the same forget set ({given})")


def _method_args(args: list[str] | None, default: str) -> list[str]:
    """``--method X`` is ``--model X``; without either, ``--model default``."""
    args = list(sys.argv[1:] if args is None else args)
    args = ["--model" if a == "--method" else a.replace("--method=", "--model=") for a in args]
    if not any(a == "--model" or a.startswith("--model=") for a in args) and not any(
        a in ("-h", "--help") for a in args
    ):
        args = ["--model", default, *args]
    return args


@releasing_locks
def unlearn_lm(args: list[str] | None = None) -> Path:
    """``medforget unlearn-lm``: apply a language-model unlearning method and export ``<out>/model.ckpt``."""
    import medforget.llm.methods  # noqa: F401  (registers the methods)
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.llm.methods.base import LMUnlearningMethod

    _quiet_lightning()
    cli = UnlearnLMCLI(
        LMUnlearningMethod, ClinicalNotesDataModule, subclass_mode_model=True, args=_method_args(args, "NPO"),
        run=False, seed_everything_default=0, trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget unlearn-lm", "description": VERBS["unlearn-lm"]},
    )
    method: LMUnlearningMethod = cli.model
    original = getattr(method.lm, "provenance", {})
    cli.datamodule.setup("fit")  # a bad forget request fails here, before any training
    check_lm_data(original, cli.datamodule, cli.config.ckpt, forget_set=False)
    parent_sha256 = sha256_file(cli.config.ckpt)
    target = Path(cli.config.out) / "model.ckpt"
    if Path(cli.config.ckpt).resolve() == target.resolve():
        raise FileExistsError(f"refusing to overwrite the input checkpoint {cli.config.ckpt} (choose another --out)")
    start = time.perf_counter()
    cli.trainer.fit(method, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    seconds = time.perf_counter() - start
    if cli.trainer.is_global_zero:
        dm = cli.datamodule
        _export_lm(cli, method.lm, provenance={
            "kind": "unlearned",
            "method": type(method).__name__,
            "method_hparams": {k: v for k, v in method.hparams.items() if not k.startswith("_")},
            "medforget_version": medforget.__version__,
            "source_checkpoint_kind": original.get("kind"),
            "parent_sha256": parent_sha256,
            "data": _lm_data_provenance(dm, original.get("data", {})),
            "parts": dm.summary(),
            "epochs": cli.trainer.current_epoch,
            "unlearn_seconds": seconds,
            "original_fit_seconds": original.get("fit_seconds"),
        })
    return target


@releasing_locks
def unlearn(args: list[str] | None = None, callbacks: list[Any] | None = None) -> Path:
    """``medforget unlearn``: apply an unlearning method and export ``<out>/model.ckpt``. ``callbacks``: extra
    Lightning callbacks for in-process callers (``medforget tune`` reports each epoch's validation score)."""
    _quiet_lightning()
    defaults = {**TRAINER_DEFAULTS, "callbacks": list(callbacks)} if callbacks else TRAINER_DEFAULTS
    cli = UnlearnCLI(
        UnlearningMethod, DicomReportDataModule, subclass_mode_model=True, args=_method_args(args, "FineTune"),
        run=False,
        seed_everything_default=0, trainer_defaults=defaults, save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget unlearn", "description": VERBS["unlearn"]},
    )
    from medforget.evaluation.audit import check_split

    method: UnlearningMethod = cli.model
    original = getattr(method.classifier, "provenance", {})
    cli.datamodule.setup("fit")
    check_split(method.classifier, cli.datamodule, cli.config.ckpt)
    parent_sha256 = sha256_file(cli.config.ckpt)
    start = time.perf_counter()
    cli.trainer.fit(method, datamodule=cli.datamodule, ckpt_path=cli.resume_path())
    seconds = time.perf_counter() - start
    selected = _select_checkpoint(cli)
    target = Path(cli.config.out) / "model.ckpt"
    if cli.trainer.is_global_zero:
        dm = cli.datamodule
        export_classifier(method.classifier, target, protect=(cli.config.ckpt,), overwrite=True, provenance={
            "kind": "unlearned",
            "method": type(method).__name__,
            "method_hparams": {k: v for k, v in method.hparams.items() if not k.startswith("_")},
            "medforget_version": medforget.__version__,
            "split_fingerprint": original.get("split_fingerprint", dm.split_fingerprint),
            "source_checkpoint_kind": original.get("kind"),
            "parent_sha256": parent_sha256,
            "forget_patients": dm.summary()["forget"]["patients"],
            "data": _data_provenance(dm),
            "unlearn_seconds": seconds,
            "selection": selected,
            # which forget patients checkpoint selection saw, as fraction and seed (the audit leaves them out)
            "selection_split": {"fraction": dm.selection_fraction, "seed": dm.seed,
                                "patients": dm.summary().get("forget_selection", {}).get("patients", 0)},
        })
    return target


def _select_checkpoint(cli: LightningCLI) -> dict[str, Any]:
    """Load the weights of the epoch with the best validation selection score (``checkpoint.monitor``) into the
    method, and describe the choice; without a monitored score (no val patients) the last weights are kept."""
    selection = [c for c in cli.trainer.checkpoint_callbacks
                 if isinstance(c, ModelCheckpoint) and not isinstance(c, ResumePoint)]
    callback = selection[0] if selection else None
    monitor = getattr(callback, "monitor", None)
    best = getattr(callback, "best_model_path", "")
    if not monitor or not best:
        if monitor:
            log.warning("no %s was logged (the datamodule has no val patients?): exporting the last weights", monitor)
        return {"monitor": monitor, "selected": "last", "epoch": cli.trainer.current_epoch}
    if not Path(best).is_file():
        raise FileNotFoundError(f"the checkpoint of the selected epoch, {best}, is missing (deleted or moved?); rerun "
                                f"without --ckpt_path, or with --checkpoint.monitor null to export the last epoch")
    state = torch.load(best, map_location="cpu", weights_only=True)
    cli.model.load_state_dict(state["state_dict"])
    return {"monitor": monitor, "selected": Path(best).name, "epoch": int(state["epoch"]),
            "score": float(callback.best_model_score), **state.get("medforget_selection", {})}


@releasing_locks
def evaluate(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget evaluate``: the audit (``audit.json``, ``audit.md``, ``audit.html``, plots) of original / unlearned /
    retrained checkpoints, one or several runs (seeds)."""
    from medforget.evaluation.audit import (
        AuditConfig,
        Tolerances,
        format_attacks,
        format_criteria,
        format_heads,
        format_per_patient,
        format_table,
        format_verdict,
        means,
        run_audit,
    )

    _quiet_lightning()
    parser = ArgumentParser(prog="medforget evaluate", description=VERBS["evaluate"], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile)
    for name, what in (("original", "the original model"), ("unlearned", "the unlearned model"),
                       ("retrained", "the model retrained without the forget patients (the target)")):
        parser.add_argument(f"--{name}", type=str, nargs="+", default=None,
                            help=f"Checkpoint(s) of {what}; several (one per seed) give mean ± std.")
    parser.add_argument("--forget", type=str, nargs="+", default=None,
                        help="Forget request file(s): one patient ID per line; one for all runs or one per run.")
    parser.add_argument("--out", type=str, default="runs/evaluation",
                        help="Output directory: audit.json, audit.md, audit.html, plots/.")
    parser.add_argument("--accelerator", type=str, default="auto", help="Lightning accelerator for inference.")
    parser.add_argument("--salt_file", type=str | None, default=None,
                        help="Secret salt of the forget-request hashes (created if missing; default "
                             "<out>/private/salt). Keep it private; reuse it to compare audits.")
    parser.add_class_arguments(AuditConfig, "audit")
    parser.add_class_arguments(Tolerances, "tolerances")
    parser.add_class_arguments(DicomReportDataModule, "data", skip={"mode", "forget"})
    cfg = parser.parse_args(args)
    given = {k: list(cfg[k]) for k in ("original", "unlearned", "retrained") if cfg[k]}
    if not given:
        parser.error("give at least one of --original, --unlearned, --retrained")
    if not cfg.forget:
        parser.error("--forget is required")
    sizes = {len(v) for v in given.values()}
    if len(sizes) != 1:
        parser.error(f"give the same number of checkpoints for each model (one per run); got "
                     f"{ {k: len(v) for k, v in given.items()} }")
    n_runs = sizes.pop()
    runs = [{k: v[i] for k, v in given.items()} for i in range(n_runs)]
    RunLock(cfg.out, "evaluate").acquire()
    init = parser.instantiate_classes(cfg)
    audit_config, tolerances = init.audit, init.tolerances
    data_kwargs = cfg.data.as_dict()
    recorded = {k: v for k, v in json.loads(parser.dump(cfg, format="json")).items()
                if k not in ("salt_file", "config")}
    report = run_audit(runs, list(cfg.forget), data_kwargs, cfg.out, audit_config, tolerances,
                       accelerator=cfg.accelerator, salt_file=cfg.salt_file, cli_config=recorded)
    out = Path(cfg.out)
    view = means(report["summary"])
    table = "\n\n".join(filter(None, [
        format_table(view) + ("" if n_runs == 1 else f"\n(mean of {n_runs} runs)"),
        format_heads(view),
        format_attacks(view) if any(m.get("mia") for m in view["models"].values()) else "",
        format_per_patient(report),
        format_criteria(report["criteria"]) + "\n" + format_verdict(report) if report["criteria"] else "",
    ]))
    (out / "table.txt").write_text(table + "\n")
    write_sidecar(out / "audit.json")  # the audit's own SHA-256, checked by `medforget verify`
    print(table)
    print(f"\nwrote {out / 'audit.json'}, {out / 'audit.md'}, {out / 'audit.html'}")
    return report


def synth(args: list[str] | None = None) -> Path:
    """``medforget synth``: write a synthetic hospital."""
    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    parser = ArgumentParser(prog="medforget synth", description=VERBS["synth"], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--out", type=str, default="data/hospital", help="Output directory.")
    parser.add_argument("--overwrite", type=bool, default=False, help="Replace an existing hospital in --out.")
    parser.add_class_arguments(SyntheticConfig, None)
    cfg = parser.parse_args(args)
    init = parser.instantiate_classes(cfg)
    config = SyntheticConfig(**{k: init[k] for k in SyntheticConfig.__dataclass_fields__})
    manifest = generate_hospital(cfg.out, config, overwrite=cfg.overwrite)
    print(f"wrote {manifest}")
    return manifest


def demo(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget demo``: the whole flow on the synthetic hospital (see :mod:`medforget.demo`)."""
    from medforget.demo import run_demo

    parser = ArgumentParser(prog="medforget demo", description=VERBS["demo"], default_env=False)
    parser.add_function_arguments(run_demo)
    cfg = parser.parse_args(args)
    return run_demo(**cfg.as_dict())


@releasing_locks
def evaluate_lm(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget evaluate-lm``: the language-model audit (``lm_audit.json``, ``lm_audit.md``, ``lm_audit.html``)
    of original / unlearned / retain-only checkpoints. The data settings default to the ones the original model was
    trained with (and the forget fraction to the unlearned model's), so no ``--data`` flag is needed."""
    from medforget.checkpoint import read_checkpoint
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.llm.audit import LMAuditConfig, LMTolerances, format_lm_criteria, format_lm_table, run_lm_audit

    _quiet_lightning()
    parser = ArgumentParser(prog="medforget evaluate-lm", description=VERBS["evaluate-lm"], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile)
    for name, what in (("original", "the original language model (trained on forget + retain patients)"),
                       ("unlearned", "the unlearned language model"),
                       ("retain", "the retain-only model (trained with --data.exclude_forget true; the target)")):
        parser.add_argument(f"--{name}", type=str | None, default=None, help=f"Checkpoint of {what}.")
    parser.add_argument("--forget", type=str | None, default=None,
                        help="The forget request of patient IDs the unlearned model was given (unlearn-lm --forget); "
                             "without it, the forget fraction it was given.")
    parser.add_argument("--out", type=str, default="runs/lm_evaluation",
                        help="Output directory: lm_audit.json, lm_audit.md, lm_audit.html, plots/.")
    parser.add_argument("--salt_file", type=str | None, default=None,
                        help="Secret salt of the forget-set hashes (created if missing; default <out>/private/salt). "
                             "Keep it private; reuse it to compare audits.")
    parser.add_class_arguments(LMAuditConfig, "audit")
    parser.add_class_arguments(LMTolerances, "tolerances")
    skip = {"mode", "exclude_forget", "content", "batch_size", "num_workers"}
    parser.add_class_arguments(ClinicalNotesDataModule, "data", skip=skip)
    cfg = parser.parse_args(args)
    missing = [k for k in ("original", "unlearned", "retain") if not cfg[k]]
    if missing:
        parser.error(f"give --{', --'.join(missing)}")

    def trained_with(path: str) -> dict[str, Any]:
        return read_checkpoint(path).get("medforget_lm", {}).get("provenance", {}).get("data", {})

    fields = {k for k in cfg.data.keys()}
    original, unlearned = trained_with(cfg.original), trained_with(cfg.unlearned)
    defaults = {f"data.{k}": v for k, v in original.items() if k in fields and k not in ("forget", "forget_fraction")}
    if cfg.forget and cfg.data.forget and cfg.forget != cfg.data.forget:
        raise ValueError("give the forget request once: --forget or --data.forget")
    if not (cfg.forget or cfg.data.forget):  # a fraction-based forget set: the unlearned model's (else the original's)
        if unlearned.get("forget_by") == "patient_ids":
            raise ValueError(f"the unlearned model {cfg.unlearned} was given a forget request of patient IDs: pass "
                             "the same request with --forget FILE")
        fraction = unlearned.get("forget_fraction", original.get("forget_fraction"))
        if fraction is not None:
            defaults["data.forget_fraction"] = fraction
    parser.set_defaults(defaults)
    cfg = parser.parse_args(args)
    RunLock(cfg.out, "evaluate-lm").acquire()
    if cfg.forget:
        cfg.data.forget = cfg.forget
    init = parser.instantiate_classes(cfg)
    recorded = {k: v for k, v in json.loads(parser.dump(cfg, format="json")).items()
                if k not in ("salt_file", "config")}
    report = run_lm_audit({"original": cfg.original, "unlearned": cfg.unlearned, "retain": cfg.retain}, init.data,
                          cfg.out, init.audit, init.tolerances, salt_file=cfg.salt_file, cli_config=recorded)
    out = Path(cfg.out)
    table = format_lm_table(report)
    if report["criteria"]:
        table += "\n\n" + format_lm_criteria(report["criteria"]) + f"\nverdict: {report['verdict'].upper()}"
    (out / "table.txt").write_text(table + "\n")
    write_sidecar(out / "lm_audit.json")  # the audit's own SHA-256, checked by `medforget verify`
    print(table)
    print(f"\nwrote {out / 'lm_audit.json'}, {out / 'lm_audit.md'}, {out / 'lm_audit.html'}")
    return report


def verify(args: list[str] | None = None) -> list[Any]:
    """``medforget verify AUDIT_DIR [CKPT ...]``: see :mod:`medforget.verify`."""
    from medforget.verify import verify_or_raise

    parser = ArgumentParser(prog="medforget verify", description=VERBS["verify"], default_env=False)
    parser.add_argument("audit_dir", type=str, help="Directory of audit.json and/or lm_audit.json (with sidecars).")
    parser.add_argument("checkpoints", type=str, nargs="*", default=[],
                        help="Checkpoint files to check against the audit (default: the paths the audit recorded).")
    cfg = parser.parse_args(args)
    checks = verify_or_raise(cfg.audit_dir, cfg.checkpoints)
    for check in checks:
        print(f"OK  {check.path}: {check.message}")
    print(f"verified {len(checks)} checks: nothing changed since the audit")
    return checks


def tune(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget tune``: see :mod:`medforget.tune`."""
    from medforget.tune import tune as run_tune

    return run_tune(args)


COMMANDS = {"synth": synth, "train": train, "unlearn": unlearn, "tune": tune, "evaluate": evaluate, "demo": demo,
            "train-lm": train_lm, "unlearn-lm": unlearn_lm, "evaluate-lm": evaluate_lm, "verify": verify}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m medforget`` and the ``medforget`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python -m medforget {" + ",".join(COMMANDS) + "} [options]   (<verb> --help for options)\n\n"
    usage += "\n".join(f"  {name:<11} {text}" for name, text in VERBS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return
    if argv[0] in ("-V", "--version"):
        print(f"medforget {medforget.__version__}")
        return
    verb = argv[0]
    if verb not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(verb, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        sys.exit(f"medforget: unknown command {verb!r}{hint}\n\n{usage}")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    try:
        COMMANDS[verb](argv[1:])
    except (OSError, ValueError, KeyError) as err:
        # errors we raise for bad input: one clear line, no traceback from deep inside
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.exit(f"medforget {verb}: error: {message}")
