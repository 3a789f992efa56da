"""``python -m medforget tune``: hyper-parameter search of an unlearning method on validation data only.

An Optuna study (TPE sampler, seeded; median pruner on the per-epoch validation score) over the method's documented
knobs: the learning rate and the method's own weights (its :meth:`~medforget.methods.classifier.base.UnlearningMethod.
search_space`, centred on the values of its ``configs/unlearn/*.yaml``) and the number of unlearning epochs
(``trainer.max_epochs``). Every trial is one in-process ``medforget unlearn`` run with the sampled flags, into
``<out>/trials/<number>/``.

The objective is a validation score the unlearning system logs after every epoch, by default the checkpoint-selection
score :data:`medforget.methods.classifier.selection.SCORE`: the forget patients set aside for selection
(``--data.selection_fraction``; the audit never scores them), a sample of retain patients and the val patients,
compared with the original model. No trial ever sees a test patient, the retrained model, or a forget sample the
audit scores; an ``--objective`` (or a ``checkpoint.monitor`` in the unlearn config) that names the test split is
refused. A trial's value is the best epoch's score (the epoch its run exports); ``best.yaml`` sets
``trainer.max_epochs`` to the number of epochs that run had *trained when it exported* (its selected epoch + 1, no
more than the sampled ``max_epochs``), so applying it reproduces the tuned trial's model and stops where it stopped.
With checkpoint selection left on, a plain ``unlearn`` run may still pick an earlier epoch.

**A tuning request.** The forget patients set aside for validation are the objective's only view of forgetting, and
the audit never scores them: with the default quarter of a 35-patient request the objective rests on 9 patients,
whose own difficulty (a retrained model lands some requests above, some below the val level) decides the winner.
When the request is for tuning only (patients drawn apart from every request to be audited, as the issue-14
leaderboard does), set most of it aside, ``--data.selection_fraction 0.9``, and apply ``best.yaml`` to the real
requests with ``--checkpoint.monitor null`` (the tuned epochs, the last weights, every forget patient audited).

The study lives in ``sqlite:///<out>/tune.db``: rerunning the same command resumes it and runs only the trials
missing to reach ``--n_trials`` (a trial left running by a crash is marked failed and rerun). Outputs:

- ``<out>/best.yaml``: the method's config with the best settings (and the ``--model.init_args.*`` /
  ``--trainer.*`` flags every trial was given), ready for
  ``python -m medforget unlearn --config <out>/best.yaml --ckpt ... --forget ...``;
- ``<out>/trials.csv``: every trial (number, state, value, parameters, run folder, seconds);
- ``<out>/optimization_history.png``: Optuna's history plot (matplotlib), when it can be drawn.

    python -m medforget tune --method SCRUB --ckpt runs/original/model.ckpt --forget forget.txt \\
        --data.manifest data/hospital/manifest.csv --n_trials 20 --out runs/tune_scrub

Every option that is not the tuner's own (below) is passed to ``unlearn`` unchanged (``--config``, ``--ckpt``,
``--forget``, ``--data.*``, ``--trainer.*``, ``--model.init_args.*`` for the knobs that are not searched).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from medforget.core.io import atomic_write_text
from medforget.core.runlock import RunLock, releasing_locks
from medforget.methods.classifier.selection import GAP_NAMES
from medforget.methods.classifier.selection import SCORE as SELECTION_SCORE

log = logging.getLogger("medforget")

ROOT = Path(__file__).resolve().parents[2]  # the source checkout: configs/ sits beside medforget/
STUDY_NAME = "medforget-tune"
#: Validation scores a trial may minimise: the selection score and its terms (all on validation parts only).
OBJECTIVES = (SELECTION_SCORE, *(f"val/gap_{name}" for name in GAP_NAMES))
#: Flags of ``unlearn`` the tuner sets itself for every trial.
OWNED_FLAGS = ("--out", "--overwrite", "--checkpoint.monitor", "--checkpoint.mode", "--ckpt_path")
DESCRIPTION = ("search an unlearning method's knobs (lr, epochs, its weights) with Optuna on validation data only "
               "(forget-selection, retain-sample and val patients); resumable SQLite study; writes best.yaml")


def check_objective(objective: str, flag: str = "--objective") -> str:
    """Refuse an objective that is not a validation score, naming ``flag``; above all one that names the test split
    (tuning on test patients would leak them into the reported results) or the retrained model."""
    lowered = objective.lower()
    if "test" in lowered:
        raise ValueError(f"{flag}={objective!r} names the test split: tuning may only use validation data "
                         f"(choose one of {', '.join(OBJECTIVES)})")
    if "retrain" in lowered:
        raise ValueError(f"{flag}={objective!r} names the retrained model: tuning never sees it "
                         f"(choose one of {', '.join(OBJECTIVES)})")
    if objective not in OBJECTIVES:
        raise ValueError(f"{flag}={objective!r} is not a validation score the unlearning system logs; choose one of "
                         f"{', '.join(OBJECTIVES)}")
    return objective


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medforget tune", description=DESCRIPTION, allow_abbrev=False,
                                     epilog="Every other option is passed to `medforget unlearn` (see its --help).")
    parser.add_argument("--method", default=None, help="Registered method name (default: the --config's class).")
    parser.add_argument("--config", default=None,
                        help="The method's unlearn config (default: the configs/unlearn/*.yaml of --method, if any); "
                             "the search is centred on its values and best.yaml extends it.")
    parser.add_argument("--out", default="runs/tune", help="Run folder: tune.db, trials/, best.yaml, trials.csv.")
    parser.add_argument("--n_trials", type=int, default=20, help="Trials the study should have (a rerun adds the "
                                                                  "missing ones).")
    parser.add_argument("--objective", default=SELECTION_SCORE, help="Validation score to minimise: "
                                                                     + ", ".join(OBJECTIVES))
    parser.add_argument("--sampler_seed", type=int, default=0, help="Seed of the TPE sampler.")
    parser.add_argument("--pruner", choices=("median", "none"), default="median",
                        help="median: stop a trial whose running best score is worse than the median of earlier "
                             "trials at the same epoch (after 2 complete trials and 1 epoch).")
    parser.add_argument("--max_epochs_high", type=int, default=None,
                        help="Largest trainer.max_epochs tried (default: twice the config's, at least 2).")
    parser.add_argument("--timeout", type=float, default=None, help="Stop starting trials after this many seconds.")
    return parser


def config_for(method: str | None, config: str | None) -> tuple[str, Path | None, dict[str, Any]]:
    """The method name, its config file and the config's content: ``config``, else the method's
    ``configs/unlearn/*.yaml`` of the source checkout, else (an installed package without the checkout) an empty
    config of the method's class, whose defaults then centre the search."""
    from medforget.methods.classifier import get_method

    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {config} does not exist")
        content = yaml.safe_load(path.read_text()) or {}
        class_path = (content.get("model") or {}).get("class_path", "") if isinstance(content.get("model"), dict) \
            else str(content.get("model") or "")
        name = class_path.rsplit(".", 1)[-1] if class_path else None
        if method is not None and name is not None and method != name:
            raise ValueError(f"--method {method} differs from the class of --config {config} ({name})")
        name = method or name
        if name is None:
            raise ValueError(f"--config {config} names no model.class_path: give --method")
        get_method(name)
        return name, path, content
    if method is None:
        raise ValueError("medforget tune needs --method or --config")
    get_method(method)
    for path in sorted((ROOT / "configs" / "unlearn").glob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        model = content.get("model")
        if isinstance(model, dict) and str(model.get("class_path", "")).rsplit(".", 1)[-1] == method:
            return method, path, content
    return method, None, {"model": {"class_path": f"medforget.methods.classifier.{method}", "init_args": {}}}


def _flag_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class _Reporter(L.Callback):
    """Reports the running best validation score after every unlearning epoch to the trial, and stops the fit when
    the pruner says so (the trial is then recorded as pruned, not raised from inside Lightning)."""

    def __init__(self, trial: Any, objective: str) -> None:
        self.trial, self.objective = trial, objective
        self.best = math.inf
        self.values: list[float] = []
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.objective not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.objective])
        if math.isnan(value):
            return
        self.values.append(value)
        self.best = min(self.best, value)
        self.trial.report(self.best, step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


#: ``--data.*`` settings that say what an unlearning epoch *is* (its steps and their batches): a trial's number of
#: epochs means nothing without them, so ``best.yaml`` keeps them. The hospital's own (manifest, image size, split
#: seed, the selection share of the tuning request) stay out of it.
EPOCH_DATA = ("unlearn_epoch", "retain_per_epoch", "retain_per_forget", "batch_size", "forget_batch_size")


def fixed_settings(forwarded: list[str]) -> dict[str, dict[str, Any]]:
    """The method and trainer settings every trial got from the command line (``--model.init_args.K=V`` and
    ``--trainer.K=V``, either ``=`` or a separate value), and the ``--data.*`` settings of :data:`EPOCH_DATA`, values
    parsed as YAML: ``{"init_args": ..., "trainer": ..., "data": ...}``. They belong in ``best.yaml`` as much as the
    searched ones, or it would not reproduce the best trial."""
    out: dict[str, dict[str, Any]] = {"init_args": {}, "trainer": {}, "data": {}}
    prefixes = {"--model.init_args.": "init_args", "--trainer.": "trainer", "--data.": "data"}
    i = 0
    while i < len(forwarded):
        flag, value = forwarded[i], None
        if "=" in flag:
            flag, value = flag.split("=", 1)
        elif i + 1 < len(forwarded) and not forwarded[i + 1].startswith("--"):
            value, i = forwarded[i + 1], i + 1
        i += 1
        for prefix, group in prefixes.items():
            key = flag[len(prefix):] if flag.startswith(prefix) else ""
            if key and value is not None and "." not in key and (group != "data" or key in EPOCH_DATA):
                out[group][key] = yaml.safe_load(value)
    return out


def trained_epochs(trial: Any) -> int:
    """The epochs a trial had trained when its run exported: its selected epoch + 1 (the sampled ``max_epochs``
    when the run recorded no selected epoch, e.g. a trial of an older study)."""
    sampled = int(trial.params["max_epochs"])
    selected = trial.user_attrs.get("selected_epoch")
    return sampled if selected is None else max(1, min(sampled, int(selected) + 1))


def _best_config(content: dict[str, Any], name: str, params: dict[str, Any], study: Any, objective: str,
                 fixed: dict[str, dict[str, Any]] | None = None) -> str:
    config = json.loads(json.dumps(content))  # a deep copy
    fixed = fixed or {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    model.setdefault("class_path", f"medforget.methods.classifier.{name}")
    init_args = model.get("init_args") or {}
    init_args.update(fixed.get("init_args", {}))
    init_args.update({k: v for k, v in params.items() if k != "max_epochs"})
    model["init_args"] = init_args
    config["model"] = model
    trainer = {**(config.get("trainer") or {}), **fixed.get("trainer", {})}
    if "max_epochs" in params:
        trainer["max_epochs"] = trained_epochs(study.best_trial)
    if trainer:
        config["trainer"] = trainer
    data = {**(config.get("data") or {}), **fixed.get("data", {})}
    if data:
        config["data"] = data
    for key in ("ckpt", "forget", "ckpt_path"):
        config.pop(key, None)
    best = study.best_trial
    header = (f"# python -m medforget unlearn --config <this file> --ckpt ORIGINAL --forget REQUEST\n"
              f"# {name} tuned by `medforget tune`: trial {best.number} of {len(study.trials)}, {objective} = "
              f"{best.value:.4f} (validation data only: forget-selection, retain-sample and val patients)\n")
    return header + yaml.safe_dump(config, sort_keys=False)


@releasing_locks
def tune(args: list[str] | None = None) -> dict[str, Any]:
    """``medforget tune``: see the module docstring. Returns the best parameters, value and output paths."""
    import optuna

    from medforget.commands.classifier import unlearn
    from medforget.core.checkpoint import read_checkpoint
    from medforget.methods.classifier import get_method

    opts, forwarded = _parser().parse_known_args(sys.argv[1:] if args is None else args)
    check_objective(opts.objective)
    owned = [a for a in forwarded if a.split("=", 1)[0] in OWNED_FLAGS]
    if owned:
        raise ValueError(f"medforget tune sets {', '.join(sorted({a.split('=', 1)[0] for a in owned}))} itself for "
                         "every trial; remove it (the run folder is tune's --out)")
    if opts.n_trials < 1:
        raise ValueError(f"--n_trials must be >= 1, got {opts.n_trials}")
    name, config_path, content = config_for(opts.method, opts.config)
    monitor = ((content.get("checkpoint") or {}).get("monitor") if isinstance(content.get("checkpoint"), dict)
               else None)
    if monitor:
        check_objective(str(monitor), flag=f"checkpoint.monitor in --config {config_path}")
    cls = get_method(name)
    if cls.one_shot:
        raise ValueError(f"{name} is training-free (one edit, no validation epochs to score): medforget tune "
                         "searches methods that train")
    init_args = (content.get("model") or {}).get("init_args") or {}
    space = cls.search_space(init_args)
    configured_epochs = int((content.get("trainer") or {}).get("max_epochs") or 3)
    high = opts.max_epochs_high or max(2, 2 * configured_epochs)

    out = Path(opts.out)
    RunLock(out, "tune").acquire()
    storage = f"sqlite:///{(out / 'tune.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1) if opts.pruner == "median"
              else optuna.pruners.NopPruner())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True, direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=opts.sampler_seed), pruner=pruner)
    identity = {"method": name, "objective": opts.objective}
    for key, value in identity.items():
        recorded = study.user_attrs.get(key)
        if recorded is None:
            study.set_user_attr(key, value)
        elif recorded != value:
            raise ValueError(f"the study in {out / 'tune.db'} was run with --{key} {recorded}, not {value}: choose "
                             "another --out (or delete that tune.db)")
    states = optuna.trial.TrialState
    for stale in study.get_trials(deepcopy=False, states=(states.RUNNING, states.WAITING)):
        # we hold the folder's lock, so a RUNNING trial is left over from a crashed run: rerun it
        study._storage.set_trial_state_values(stale._trial_id, states.FAIL)
    done = len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED)))
    missing = max(0, opts.n_trials - done)
    base = ([f"--config={config_path}"] if config_path is not None else [f"--model={name}"])

    def objective(trial: Any) -> float:
        params = {key: knob.suggest(trial, key) for key, knob in space.items()}
        epochs = trial.suggest_int("max_epochs", 1, high)
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        flags = [*base, *forwarded, *(f"--model.init_args.{k}={_flag_value(v)}" for k, v in params.items()),
                 f"--trainer.max_epochs={epochs}", f"--out={run_dir}", "--overwrite=true",
                 f"--checkpoint.monitor={opts.objective}", "--checkpoint.mode=min"]
        reporter = _Reporter(trial, opts.objective)
        start = time.perf_counter()
        path = unlearn(flags, callbacks=[reporter])
        trial.set_user_attr("seconds", time.perf_counter() - start)
        provenance = read_checkpoint(path)["medforget"]["provenance"]
        if not provenance.get("selection_split", {}).get("patients"):
            raise ValueError("no forget patient was set aside for validation (--data.selection_fraction 0?): the "
                             "tuning objective needs them; pass --data.selection_fraction > 0 (default 0.25)")
        if not reporter.values:
            raise ValueError(f"no {opts.objective} was logged: the datamodule needs val patients "
                             "(--data.val_fraction > 0) and a forget request")
        trial.set_user_attr("selected_epoch", provenance.get("selection", {}).get("epoch"))
        trial.set_user_attr("unlearn_seconds", provenance.get("unlearn_seconds"))
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(reporter.values) - 1}")
        return reporter.best

    if missing:
        print(f"tune {name}: {done} trial(s) in {out / 'tune.db'}, running {missing} more", flush=True)
        study.optimize(objective, n_trials=missing, timeout=opts.timeout, catch=())
    else:
        print(f"tune {name}: the study already has {done} finished trial(s) (--n_trials {opts.n_trials})", flush=True)
    complete = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    if not complete:
        raise RuntimeError(f"no trial of the study in {out / 'tune.db'} completed")
    best = study.best_trial
    atomic_write_text(out / "best.yaml", _best_config(content, name, best.params, study, opts.objective,
                                                  fixed_settings(forwarded)))
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    atomic_write_text(out / "trials.csv", frame.to_csv(index=False))
    plot = _plot(study, out / "optimization_history.png")
    summary = {"method": name, "objective": opts.objective, "best_value": best.value, "best_params": best.params,
               "best_trial": best.number, "best_epochs": trained_epochs(best) if "max_epochs" in best.params else None,
               "trials": len(study.trials),
               "complete": len(complete), "pruned": len(study.get_trials(deepcopy=False, states=(states.PRUNED,))),
               "best_yaml": str(out / "best.yaml"), "trials_csv": str(out / "trials.csv"),
               "plot": str(plot) if plot else None,
               "search_space": {k: repr(v) for k, v in space.items()} | {"max_epochs": f"IntKnob(1, {high})"}}
    atomic_write_text(out / "tune.json", json.dumps(summary, indent=2, default=str))
    print(f"best {opts.objective} = {best.value:.4f} (trial {best.number}): {best.params}\nwrote {out / 'best.yaml'}, "
          f"{out / 'trials.csv'}" + (f", {plot}" if plot else ""), flush=True)
    return summary


def _plot(study: Any, path: Path) -> Path | None:
    """Optuna's optimization history (matplotlib backend), or ``None`` when it cannot be drawn."""
    import warnings

    try:
        import matplotlib

        matplotlib.use("Agg")
        from optuna.visualization.matplotlib import plot_optimization_history

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot_optimization_history(study)
        tmp = path.with_name(path.stem + ".tmp.png")
        ax.figure.savefig(tmp, dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(ax.figure)
        os.replace(tmp, path)
        return path
    except Exception as err:  # noqa: BLE001 - the plot is optional; the study and CSV are the results
        log.warning("no optimization-history plot: %s", err)
        return None
