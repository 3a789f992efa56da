"""The classifier verbs: ``train``, ``unlearn`` and ``evaluate`` (the audit), each a function of its argv."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import medforget
from medforget.commands.base import TRAINER_DEFAULTS, VERBS, ResumePoint, RunCLI, method_args, quiet_lightning
from medforget.core.checkpoint import sha256_file, write_sidecar
from medforget.core.runlock import RunLock, releasing_locks
from medforget.datamodules.dicom_report import DicomReportDataModule
from medforget.methods.classifier import UnlearningMethod
from medforget.methods.classifier.selection import SCORE as SELECTION_SCORE
from medforget.systems.classifier import FusionClassifier, export_classifier

log = logging.getLogger("medforget")


class TrainCLI(RunCLI):
    default_out = "runs/original"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.channels", "model.image_channels")  # one flag: the data's and the encoder's
        parser.add_argument("--shards", type=int | None, default=None,
                            help="SISA: train one model per shard of K disjoint patient shards and export their "
                                 "ensemble, which `unlearn --method SISA` unlearns exactly "
                                 "(medforget.methods.classifier.sharding).")
        parser.add_argument("--slices", type=int, default=1,
                            help="SISA: slices per shard, trained incrementally (trainer.max_epochs per slice).")


class UnlearnCLI(RunCLI):
    default_out = "runs/unlearned"
    verb = "unlearn"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--ckpt", type=str, help="Trained classifier checkpoint to unlearn from (never modified).")
        parser.add_argument("--forget", type=str, help="Forget request: a file with one patient ID per line.")
        parser.link_arguments("ckpt", "model.init_args.ckpt")
        parser.link_arguments("forget", "data.forget")
        parser.set_defaults({"data.mode": "unlearn", "trainer.max_epochs": 3})
        # checkpoint selection on the validation parts (medforget.methods.classifier.selection); the best epoch is
        # exported
        parser.set_defaults({"checkpoint.monitor": SELECTION_SCORE, "checkpoint.mode": "min",
                             "checkpoint.save_top_k": 1, "checkpoint.filename": "best-{epoch}"})

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        for flag in ("ckpt", "forget"):
            if not self.config.get(flag):
                raise ValueError(f"medforget unlearn needs --{flag}")


@releasing_locks
def train(args: list[str] | None = None) -> Path:
    """``medforget train``: fit a FusionClassifier and export ``<out>/model.ckpt``."""
    quiet_lightning()
    cli = TrainCLI(
        FusionClassifier, DicomReportDataModule, args=args, run=False, seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget train", "description": VERBS["train"]},
    )
    if cli.config.get("shards") is not None:  # SISA: the shards, their slice checkpoints and the ensemble
        from medforget.methods.classifier.sharding import train_sharded

        return train_sharded(cli)
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
            "data": dm.provenance(),
            "epochs": cli.trainer.current_epoch,
            "fit_seconds": seconds,
        })
    return target


@releasing_locks
def unlearn(args: list[str] | None = None, callbacks: list[Any] | None = None) -> Path:
    """``medforget unlearn``: apply an unlearning method and export ``<out>/model.ckpt``. ``callbacks``: extra
    Lightning callbacks for in-process callers (``medforget tune`` reports each epoch's validation score)."""
    quiet_lightning()
    defaults = {**TRAINER_DEFAULTS, "callbacks": list(callbacks)} if callbacks else TRAINER_DEFAULTS
    cli = UnlearnCLI(
        UnlearningMethod, DicomReportDataModule, subclass_mode_model=True,
        args=method_args(args, "FineTune", UnlearningMethod.registry), run=False,
        seed_everything_default=0, trainer_defaults=defaults, save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "medforget unlearn", "description": VERBS["unlearn"]},
    )
    from medforget.audit.classifier.measure import check_split

    method: UnlearningMethod = cli.model
    original = getattr(method.classifier, "provenance", {})
    # timed from the data setup (decoding the studies the run reads), as train's fit_seconds include its own: an
    # unlearning-vs-retraining time ratio then compares the same kinds of work
    start = time.perf_counter()
    # no validation and a method that does not read the val part itself: the val sample is not decoded
    cli.datamodule.read_val = cli.trainer.limit_val_batches != 0 or method.reads_val
    cli.datamodule.setup("fit")
    check_split(method.classifier, cli.datamodule, cli.config.ckpt)
    if method.retrains:  # exact unlearning (SISA): retrain the affected shards instead of fitting the method
        return method.retrain(cli)
    parent_sha256 = sha256_file(cli.config.ckpt)
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
            "data": dm.provenance(),
            "sampling": dm.sampling(),  # what the run read: the forget patients, a bounded retain pool, val sample
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


def audit_runs(given: dict[str, list[str]]) -> list[dict[str, str]]:
    """The audit's runs from the checkpoints given per model: one per seed, the same number for each model, or one
    ``--original`` and ``--unlearned`` with several ``--retrained`` models (seeds of the target). The second form
    audits the one unlearned model against each retrained model: the interval then holds the target's seed noise and
    the gap between the retrained models is the noise floor of the verdict."""
    sizes = {k: len(v) for k, v in given.items()}
    n_runs = max(sizes.values())
    broadcast = n_runs > 1 and sizes.get("retrained") == n_runs and all(
        n == 1 for k, n in sizes.items() if k != "retrained")
    if len(set(sizes.values())) != 1 and not broadcast:
        raise ValueError(f"give the same number of checkpoints for each model (one per run), or one --original and "
                         f"--unlearned with several --retrained; got {sizes}")
    if broadcast and len(set(given["retrained"])) != n_runs:
        raise ValueError("--retrained names the same checkpoint twice: the noise floor needs distinct retrained models")
    return [{k: v[i if len(v) > 1 else 0] for k, v in given.items()} for i in range(n_runs)]


@releasing_locks
def evaluate(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget evaluate``: the audit (``audit.json``, ``audit.md``, ``audit.html``, plots) of original / unlearned /
    retrained checkpoints, one or several runs (seeds)."""
    from medforget.audit.classifier.audit import run_audit
    from medforget.audit.classifier.config import AuditConfig, Tolerances
    from medforget.audit.classifier.tables import (
        format_attacks,
        format_criteria,
        format_heads,
        format_per_patient,
        format_table,
        format_verdict,
        means,
    )

    quiet_lightning()
    parser = ArgumentParser(prog="medforget evaluate", description=VERBS["evaluate"], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile)
    for name, what in (("original", "the original model"), ("unlearned", "the unlearned model"),
                       ("retrained", "the model retrained without the forget patients (the target)")):
        parser.add_argument(f"--{name}", type=str, nargs="+", default=None,
                            help=f"Checkpoint(s) of {what}; several (one per seed) give mean ± std. Several "
                                 "--retrained with one --original and --unlearned audit that model against each "
                                 "retrained model (their own gap is the verdict's noise floor).")
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
    try:
        runs = audit_runs(given)
    except ValueError as err:
        parser.error(str(err))
    n_runs = len(runs)
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
