"""The clinical language-model verbs: ``train-lm``, ``unlearn-lm`` and ``evaluate-lm``, each a function of its argv."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import medforget
from medforget.commands.base import TRAINER_DEFAULTS, VERBS, RunCLI, method_args, quiet_lightning
from medforget.core.checkpoint import sha256_file, write_sidecar
from medforget.core.runlock import RunLock, releasing_locks
from medforget.datamodules.lm import check_lm_data

log = logging.getLogger("medforget")


class LMRunCLI(RunCLI):
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
    from medforget.systems.lm import export_hf, export_lm

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


class TrainLMCLI(LMRunCLI):
    default_out = "runs/lm"
    verb = "train-lm"


@releasing_locks
def train_lm(args: list[str] | None = None) -> Path:
    """``medforget train-lm``: fit a :class:`~medforget.systems.lm.ClinicalLM` and export ``<out>/model.ckpt``
    (and, with ``--export_hf DIR``, a Hugging Face directory)."""
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.systems.lm import ClinicalLM

    quiet_lightning()
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


class UnlearnLMCLI(LMRunCLI):
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


@releasing_locks
def unlearn_lm(args: list[str] | None = None) -> Path:
    """``medforget unlearn-lm``: apply a language-model unlearning method and export ``<out>/model.ckpt``."""
    from medforget.datamodules.lm import ClinicalNotesDataModule
    from medforget.methods.lm import LMUnlearningMethod  # (importing the package registers the methods)

    quiet_lightning()
    cli = UnlearnLMCLI(
        LMUnlearningMethod, ClinicalNotesDataModule, subclass_mode_model=True,
        args=method_args(args, "NPO", LMUnlearningMethod.registry), run=False, seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
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
def evaluate_lm(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget evaluate-lm``: the language-model audit (``lm_audit.json``, ``lm_audit.md``, ``lm_audit.html``)
    of original / unlearned / retain-only checkpoints. The data settings default to the ones the original model was
    trained with (and the forget fraction to the unlearned model's), so no ``--data`` flag is needed."""
    from medforget.audit.lm.audit import run_lm_audit
    from medforget.audit.lm.config import LMAuditConfig, LMTolerances
    from medforget.audit.lm.tables import format_lm_criteria, format_lm_table
    from medforget.core.checkpoint import read_checkpoint
    from medforget.datamodules.lm import ClinicalNotesDataModule

    quiet_lightning()
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
