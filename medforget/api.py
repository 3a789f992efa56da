"""The Python API: typed functions for every step, what the CLI's verbs, the demo, the notebooks, the benchmarks and a
hospital pipeline call.

Each function runs the same code as its verb (``api.train`` is ``medforget train``: the same LightningCLI, the same
saved config, checkpoints, run lock and provenance) from typed arguments. Every typed ``__init__`` argument stays
reachable: ``data=``, ``model=``, ``trainer=`` (and ``method_args=``, ``audit=``, ``tolerances=``) take
``{"name": value}`` for ``--data.name=value`` etc.; ``config=`` takes YAML files (``--config``), and ``extra_args``
any further command-line flags (applied last)::

    from medforget import api

    original = api.train("hospital/manifest.csv", "runs/original", epochs=25)
    unlearned = api.unlearn(original, "forget.txt", method="SCRUB", manifest="hospital/manifest.csv",
                            method_args={"lr": 1e-3})
    report = api.evaluate("forget.txt", original=original, unlearned=unlearned, retrained="runs/retrained/model.ckpt",
                          manifest="hospital/manifest.csv")
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medforget import commands
from medforget.commands.base import quiet_lightning as _quiet_lightning

Paths = str | Path | Sequence[str | Path]


def quiet_lightning() -> None:
    """Silence Lightning's known harmless warnings (few dataloader workers, few batches, ...) for a caller that also
    uses the datamodules or models directly; every function here already does so for its own run."""
    _quiet_lightning()


def _value(value: Any) -> str:
    """A value as jsonargparse reads it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def flags(group: str, values: Mapping[str, Any] | None) -> list[str]:
    """``{"lr": 1e-3}`` under ``group`` ``model.init_args`` -> ``["--model.init_args.lr=0.001"]``."""
    prefix = f"--{group}." if group else "--"
    return [f"{prefix}{name}={_value(value)}" for name, value in (values or {}).items()]


def _configs(config: Paths | None) -> list[str]:
    if config is None:
        return []
    paths = [config] if isinstance(config, (str, Path)) else list(config)
    return [f"--config={p}" for p in paths]


def _paths(value: Paths | None) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _given(flag: str, value: Any) -> list[str]:
    """``[f"--{flag}={value}"]``, or nothing for ``None``."""
    return [] if value is None else [f"--{flag}={_value(value)}"]


def _fit(head: Sequence[str], *, out: str | Path, config: Paths | None, data: Mapping[str, Any] | None,
         model_group: str, model: Mapping[str, Any] | None, trainer: Mapping[str, Any] | None, epochs: int | None,
         seed: int | None, accelerator: str | None, overwrite: bool, export_hf: str | Path | None = None,
         extra_args: Sequence[str] = ()) -> list[str]:
    """The argv of a verb that fits something (``train``, ``unlearn``, ``train-lm``, ``unlearn-lm``): config files,
    the verb's own ``head`` flags, ``--data.*``, ``--<model_group>.*``, ``--trainer.*``, the run flags, ``--out`` and
    ``extra_args`` last (so they win)."""
    return [*_configs(config), *head, *flags("data", data), *flags(model_group, model), *flags("trainer", trainer),
            *_given("trainer.max_epochs", epochs), *_given("seed_everything", seed),
            *_given("trainer.accelerator", accelerator), f"--overwrite={_value(overwrite)}",
            *_given("export_hf", export_hf), f"--out={out}", *extra_args]


def train(
    manifest: str | Path | None = None,
    out: str | Path = "runs/original",
    *,
    exclude_patients: str | Path | None = None,
    shards: int | None = None,
    slices: int = 1,
    epochs: int | None = None,
    seed: int | None = None,
    accelerator: str | None = None,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Fit a fusion classifier (``medforget train``) and export ``<out>/model.ckpt``.

    Args:
        manifest: The hospital's manifest (``None``: the embedded synthetic hospital).
        out: Run directory.
        exclude_patients: A forget request to leave out: the retrained reference model.
        shards: SISA: train one model per shard of ``shards`` disjoint patient shards and export their ensemble
            (``unlearn(..., method="SISA")`` unlearns it exactly); ``None``: one model.
        slices: SISA: slices per shard, trained incrementally (``epochs`` per slice).
        epochs: ``--trainer.max_epochs`` (default 25).
        seed: ``--seed_everything`` (default 0); the split's seed is ``data={"seed": ...}``.
        accelerator: ``--trainer.accelerator``.
        overwrite: Replace an existing ``<out>/model.ckpt``.
        data: ``--data.*`` (:class:`~medforget.datamodules.dicom_report.DicomReportDataModule`).
        model: ``--model.*`` (:class:`~medforget.systems.classifier.FusionClassifier`).
        trainer: ``--trainer.*`` (Lightning's ``Trainer``).
        config: YAML config file(s), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The exported checkpoint.
    """
    head = [*_given("data.manifest", manifest), *_given("data.exclude_patients", exclude_patients),
            *([f"--shards={shards}", f"--slices={slices}"] if shards is not None else [])]
    return commands.train(_fit(head, out=out, config=config, data=data, model_group="model", model=model,
                               trainer=trainer, epochs=epochs, seed=seed, accelerator=accelerator,
                               overwrite=overwrite, extra_args=extra_args))


def unlearn(
    ckpt: str | Path,
    forget: str | Path,
    method: str | None = None,
    out: str | Path = "runs/unlearned",
    *,
    manifest: str | Path | None = None,
    method_args: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    accelerator: str | None = None,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Remove the patients of a forget request from a classifier checkpoint (``medforget unlearn``).

    Args:
        ckpt: The trained checkpoint (never modified).
        forget: The forget request: a file with one patient ID per line.
        method: A registered method (:func:`medforget.methods.classifier.list_methods`; ``None``: the config's,
            else ``FineTune``); an unknown name raises :class:`~medforget.core.registry.UnknownNameError` with the
            closest names.
        out: Run directory.
        manifest: The manifest the checkpoint was trained on (``None``: the embedded synthetic hospital).
        method_args: The method's own arguments (``--model.init_args.*``), e.g. ``{"lr": 1e-3}``.
        epochs: ``--trainer.max_epochs`` (default 3).
        seed: ``--seed_everything``.
        accelerator: ``--trainer.accelerator``.
        overwrite: Replace an existing ``<out>/model.ckpt``.
        data: ``--data.*``.
        trainer: ``--trainer.*``.
        config: YAML config file(s) (e.g. ``configs/unlearn/scrub.yaml``), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The exported unlearned checkpoint.
    """
    head = [*_given("method", method), f"--ckpt={ckpt}", f"--forget={forget}", *_given("data.manifest", manifest)]
    return commands.unlearn(_fit(head, out=out, config=config, data=data, model_group="model.init_args",
                                 model=method_args, trainer=trainer, epochs=epochs, seed=seed,
                                 accelerator=accelerator, overwrite=overwrite, extra_args=extra_args))


def evaluate(
    forget: Paths,
    *,
    original: Paths | None = None,
    unlearned: Paths | None = None,
    retrained: Paths | None = None,
    manifest: str | Path | None = None,
    out: str | Path = "runs/evaluation",
    accelerator: str | None = None,
    data: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    tolerances: Mapping[str, Any] | None = None,
    salt_file: str | Path | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The classifier audit (``medforget evaluate``): ``audit.json``, ``audit.md``, ``audit.html`` in ``out``.

    Args:
        forget: The forget request file(s): one for all runs or one per run.
        original: Checkpoint(s) of the original model, one per run (seed).
        unlearned: Checkpoint(s) of the unlearned model.
        retrained: Checkpoint(s) of the model retrained without the forget patients (the target). Several with one
            ``original`` and ``unlearned``: the one unlearned model is audited against each, and the gap between the
            retrained models is the verdict's noise floor.
        manifest: The manifest the models were trained on.
        out: Output directory.
        accelerator: Lightning accelerator for inference.
        data: ``--data.*`` (as in training).
        audit: ``--audit.*`` (:class:`~medforget.audit.classifier.config.AuditConfig`).
        tolerances: ``--tolerances.*`` (:class:`~medforget.audit.classifier.config.Tolerances`).
        salt_file: Secret salt of the forget-request hashes.
        config: YAML config file(s), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The audit report (as written to ``audit.json``).
    """
    argv = _configs(config)
    for name, paths in (("original", original), ("unlearned", unlearned), ("retrained", retrained)):
        if paths is not None:
            argv += [f"--{name}", *_paths(paths)]
    argv += ["--forget", *_paths(forget), *_given("data.manifest", manifest), *flags("data", data),
             *flags("audit", audit), *flags("tolerances", tolerances), f"--out={out}",
             *_given("accelerator", accelerator), *_given("salt_file", salt_file), *extra_args]
    return commands.evaluate(argv)


def train_lm(
    out: str | Path = "runs/lm",
    *,
    exclude_forget: bool = False,
    epochs: int | None = None,
    seed: int | None = None,
    accelerator: str | None = None,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    model: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    export_hf: str | Path | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Fit a clinical-notes language model (``medforget train-lm``) and export ``<out>/model.ckpt``.

    Args:
        out: Run directory.
        exclude_forget: Leave out the forget patients: the retain-only reference model.
        epochs: ``--trainer.max_epochs`` (default 30).
        seed: ``--seed_everything``.
        accelerator: ``--trainer.accelerator``.
        overwrite: Replace an existing ``<out>/model.ckpt`` (and ``export_hf``).
        data: ``--data.*`` (:class:`~medforget.datamodules.lm.ClinicalNotesDataModule`).
        model: ``--model.*`` (:class:`~medforget.systems.lm.ClinicalLM`).
        trainer: ``--trainer.*``.
        export_hf: Also write a Hugging Face ``save_pretrained`` directory there.
        config: YAML config file(s), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The exported checkpoint.
    """
    head = ["--data.exclude_forget=true"] if exclude_forget else []
    return commands.train_lm(_fit(head, out=out, config=config, data=data, model_group="model", model=model,
                                  trainer=trainer, epochs=epochs, seed=seed, accelerator=accelerator,
                                  overwrite=overwrite, export_hf=export_hf, extra_args=extra_args))


def unlearn_lm(
    ckpt: str | Path,
    method: str | None = None,
    out: str | Path = "runs/lm_unlearned",
    *,
    forget: str | Path | None = None,
    method_args: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    accelerator: str | None = None,
    overwrite: bool = False,
    data: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    export_hf: str | Path | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Remove patients from a clinical-notes language model (``medforget unlearn-lm``).

    Args:
        ckpt: The trained language-model checkpoint (never modified).
        method: A registered language-model method (``LMUnlearningMethod.registry``; ``None``: the config's, else
            ``NPO``); an unknown name raises :class:`~medforget.core.registry.UnknownNameError` with the closest
            names.
        out: Run directory.
        forget: A forget request of patient IDs (``None``: ``data={"forget_fraction": ...}``, default 0.05).
        method_args: The method's own arguments (``--model.init_args.*``).
        epochs: ``--trainer.max_epochs`` (default 5).
        seed: ``--seed_everything``.
        accelerator: ``--trainer.accelerator``.
        overwrite: Replace an existing ``<out>/model.ckpt`` (and ``export_hf``).
        data: ``--data.*`` (the training run's corpus and split settings).
        trainer: ``--trainer.*``.
        export_hf: Also write a Hugging Face ``save_pretrained`` directory there.
        config: YAML config file(s) (e.g. ``configs/unlearn_lm/npo.yaml``), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The exported unlearned checkpoint.
    """
    head = [*_given("method", method), f"--ckpt={ckpt}", *_given("forget", forget)]
    return commands.unlearn_lm(_fit(head, out=out, config=config, data=data, model_group="model.init_args",
                                    model=method_args, trainer=trainer, epochs=epochs, seed=seed,
                                    accelerator=accelerator, overwrite=overwrite, export_hf=export_hf,
                                    extra_args=extra_args))


def evaluate_lm(
    original: str | Path,
    unlearned: str | Path,
    retain: str | Path,
    *,
    forget: str | Path | None = None,
    out: str | Path = "runs/lm_evaluation",
    data: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    tolerances: Mapping[str, Any] | None = None,
    salt_file: str | Path | None = None,
    config: Paths | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The language-model audit (``medforget evaluate-lm``): ``lm_audit.json``, ``.md``, ``.html`` in ``out``.

    Args:
        original: The original model's checkpoint.
        unlearned: The unlearned model's checkpoint.
        retain: The retain-only model's checkpoint (the target).
        forget: The forget request of patient IDs the unlearned model was given (``None``: its forget fraction).
        out: Output directory.
        data: ``--data.*`` (default: the original model's settings).
        audit: ``--audit.*`` (:class:`~medforget.audit.lm.config.LMAuditConfig`).
        tolerances: ``--tolerances.*`` (:class:`~medforget.audit.lm.config.LMTolerances`).
        salt_file: Secret salt of the forget-set hashes.
        config: YAML config file(s), applied first.
        extra_args: Further command-line flags, applied last.

    Returns:
        The audit report (as written to ``lm_audit.json``).
    """
    argv = [*_configs(config), f"--original={original}", f"--unlearned={unlearned}", f"--retain={retain}",
            *_given("forget", forget), *flags("data", data), *flags("audit", audit),
            *flags("tolerances", tolerances), *_given("salt_file", salt_file), f"--out={out}", *extra_args]
    return commands.evaluate_lm(argv)


def tune(
    ckpt: str | Path,
    forget: str | Path,
    method: str | None = None,
    out: str | Path = "runs/tune",
    *,
    n_trials: int = 20,
    objective: str | None = None,
    sampler_seed: int = 0,
    pruner: str = "median",
    max_epochs_high: int | None = None,
    timeout: float | None = None,
    manifest: str | Path | None = None,
    method_args: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    trainer: Mapping[str, Any] | None = None,
    seed: int | None = None,
    accelerator: str | None = None,
    config: str | Path | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Search an unlearning method's settings with Optuna on validation data only (``medforget tune``).

    Args:
        ckpt: The trained checkpoint (never modified).
        forget: The forget request.
        method: A registered method (``None``: the config's).
        out: Run folder: ``tune.db`` (the resumable study), ``trials/``, ``best.yaml``, ``trials.csv``.
        n_trials: Trials the study should have (a rerun adds only the missing ones).
        objective: Validation score to minimise (default ``val/selection_score``; never a test-split score).
        sampler_seed: Seed of the TPE sampler.
        pruner: ``median`` or ``none``.
        max_epochs_high: Largest ``trainer.max_epochs`` tried (default: twice the config's, at least 2).
        timeout: Stop starting trials after this many seconds.
        manifest: The manifest the checkpoint was trained on.
        method_args: The method's own arguments that are not searched (``--model.init_args.*`` of every trial, e.g.
            RefDistill's ``{"reference_dir": ..., "num_references": 4}``); a searched knob here is overridden by the
            sampled value.
        data: ``--data.*`` of every trial.
        trainer: ``--trainer.*`` of every trial.
        seed: ``--seed_everything`` of every trial.
        accelerator: ``--trainer.accelerator``.
        config: The method's YAML config (e.g. ``configs/unlearn/scrub.yaml``; one file: the search is centred on
            its values and ``best.yaml`` extends it).
        extra_args: Further flags passed to every trial's ``unlearn``.

    Returns:
        The best parameters, value and output paths.
    """
    if config is not None and not isinstance(config, (str, Path)):
        raise TypeError(f"api.tune takes one config file (the method's, which best.yaml extends), got {config!r}")
    argv = [*_given("method", method), *_given("config", config), f"--out={out}", f"--n_trials={n_trials}",
            f"--sampler_seed={sampler_seed}", f"--pruner={pruner}", *_given("objective", objective),
            *_given("max_epochs_high", max_epochs_high), *_given("timeout", timeout),
            f"--ckpt={ckpt}", f"--forget={forget}", *_given("data.manifest", manifest), *flags("data", data),
            *flags("model.init_args", method_args), *flags("trainer", trainer), *_given("seed_everything", seed),
            *_given("trainer.accelerator", accelerator), *extra_args]
    return commands.tune(argv)


def synth(out: str | Path = "data/hospital", *, overwrite: bool = False, **settings: Any) -> Path:
    """Write a synthetic hospital (``medforget synth``); ``settings`` are
    :class:`~medforget.datamodules.synthetic.SyntheticConfig` fields (``num_patients=300``, ``image_size=64``,
    ``seed=0`` ...). Returns the manifest."""
    from medforget.datamodules.synthetic import SyntheticConfig, generate_hospital

    return generate_hospital(out, SyntheticConfig(**settings), overwrite=overwrite)


def verify(audit_dir: str | Path, checkpoints: Sequence[str | Path] = ()) -> list[Any]:
    """The chain of custody (``medforget verify``): recompute the SHA-256 of an audit's files and of the checkpoints
    it audited; raises :class:`~medforget.core.verify.VerificationError` naming any file that changed."""
    from medforget.core.verify import verify_or_raise

    return verify_or_raise(audit_dir, list(checkpoints))
