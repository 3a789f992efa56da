"""``medforget tune``: an Optuna study on validation data only, resumable from its SQLite file."""

from __future__ import annotations

import csv

import optuna
import pytest
import yaml

from medforget.cli import main
from medforget.commands import unlearn
from medforget.commands.tune import ROOT, check_objective, config_for, trained_epochs, tune
from medforget.core.checkpoint import read_checkpoint
from medforget.methods.classifier import get_method
from medforget.methods.classifier.search_space import FloatKnob
from medforget.methods.classifier.selection import SCORE


def _flags(trained_ckpt, forget_file, tiny_hospital) -> list[str]:
    return ["--method=FineTune", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
            f"--data.manifest={tiny_hospital}", "--data.image_size=32", "--data.batch_size=16",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--max_epochs_high=2"]


def test_tune_runs_resumes_and_writes_a_usable_config(trained_ckpt, forget_file, tiny_hospital, tmp_path):
    out = tmp_path / "tune"
    # settings every trial gets but the search does not touch: best.yaml must carry them too
    flags = [*_flags(trained_ckpt, forget_file, tiny_hospital), "--model.init_args.weight_decay=0.01",
             "--trainer.gradient_clip_val", "2.0", "--data.unlearn_epoch=forget"]
    first = tune([*flags, "--n_trials=2", f"--out={out}"])
    assert first["trials"] == 2 and first["method"] == "FineTune"
    storage = f"sqlite:///{out / 'tune.db'}"
    study = optuna.load_study(study_name="medforget-tune", storage=storage)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # every value is the best validation selection score of its run, the one its exported checkpoint records
    for trial in study.trials:
        selection = read_checkpoint(f"{trial.user_attrs['run_dir']}/model.ckpt")["medforget"]["provenance"]
        assert selection["selection"]["monitor"] == SCORE
        assert trial.value == pytest.approx(selection["selection"]["score"], rel=1e-5)
        assert selection["selection_split"]["patients"] > 0
        assert trial.intermediate_values  # reported once per unlearning epoch (for the pruner)
    first_params = [t.params for t in study.trials]
    mtimes = {t.number: (out / "trials" / f"{t.number:04d}" / "model.ckpt").stat().st_mtime for t in study.trials}

    # rerun with a larger budget: the two finished trials are kept, only the third runs
    second = tune([*flags, "--n_trials=3", f"--out={out}"])
    study = optuna.load_study(study_name="medforget-tune", storage=storage)
    assert second["trials"] == 3 and len(study.trials) == 3
    assert [t.params for t in study.trials[:2]] == first_params
    for number, mtime in mtimes.items():
        assert (out / "trials" / f"{number:04d}" / "model.ckpt").stat().st_mtime == mtime, "a finished trial reran"
    # the same budget again: nothing runs
    assert tune([*flags, "--n_trials=3", f"--out={out}"])["trials"] == 3

    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    assert {"params_lr", "params_max_epochs", "value"} <= set(rows[0])

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["class_path"].endswith(".FineTune")
    assert best["model"]["init_args"]["lr"] == pytest.approx(study.best_params["lr"])
    # the epochs the best trial had trained when it exported (its selected epoch + 1), within the sampled bound
    selected = study.best_trial.user_attrs["selected_epoch"]
    assert best["trainer"]["max_epochs"] == min(selected + 1, study.best_params["max_epochs"])
    assert second["best_epochs"] == best["trainer"]["max_epochs"]
    assert best["model"]["init_args"]["weight_decay"] == 0.01 and best["trainer"]["gradient_clip_val"] == 2.0
    assert best["data"] == {"batch_size": 16, "unlearn_epoch": "forget"}  # what the tuned epochs are made of
    path = unlearn([f"--config={out / 'best.yaml'}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                    f"--data.manifest={tiny_hospital}", "--data.image_size=32", "--data.batch_size=16",
                    "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", f"--out={tmp_path / 'u'}"])
    hparams = read_checkpoint(path)["medforget"]["provenance"]["method_hparams"]
    assert hparams["lr"] == pytest.approx(study.best_params["lr"])
    assert hparams["weight_decay"] == 0.01


def test_fixed_settings_read_both_flag_forms():
    from medforget.commands.tune import fixed_settings

    got = fixed_settings(["--model.init_args.alpha=0.5", "--model.init_args.name", "x", "--trainer.precision=16",
                          "--data.batch_size=8", "--trainer.logger.init_args.x=1", "--flag", "--data.unlearn_epoch",
                          "forget", "--data.manifest=m.csv", "--data.selection_fraction=0.9",
                          "--data.retain_per_forget=2"])
    # the data settings that define an epoch are kept (best.yaml's epochs mean nothing without them); the hospital's
    # and the tuning request's are not
    assert got == {"init_args": {"alpha": 0.5, "name": "x"}, "trainer": {"precision": 16},
                   "data": {"batch_size": 8, "unlearn_epoch": "forget", "retain_per_forget": 2}}


@pytest.mark.parametrize("objective", ["test/auc", "val/test_auc", "retrained_gap"])
def test_tune_refuses_an_objective_outside_validation(objective, trained_ckpt, forget_file, tiny_hospital,
                                                      tmp_path):
    with pytest.raises(ValueError, match="--objective") as err:
        tune([*_flags(trained_ckpt, forget_file, tiny_hospital), f"--objective={objective}",
              f"--out={tmp_path / 't'}"])
    if "test" in objective:
        assert "test split" in str(err.value)
    assert not (tmp_path / "t" / "tune.db").exists()  # refused before any study or trial


def test_tune_refuses_a_config_monitoring_the_test_split(tmp_path, trained_ckpt, forget_file, tiny_hospital):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": "medforget.methods.classifier.FineTune"},
                                      "checkpoint": {"monitor": "test/auc"}}))
    with pytest.raises(ValueError, match="checkpoint.monitor.*test split"):
        tune([f"--config={config}", f"--ckpt={trained_ckpt}", f"--forget={forget_file}", f"--out={tmp_path / 't'}"])


def test_tune_verb_exits_with_one_line_naming_the_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--method=FineTune", "--objective=test/auc", f"--out={tmp_path}"])
    assert "--objective" in str(exc.value) and "test split" in str(exc.value)


def test_check_objective_accepts_the_validation_scores():
    assert check_objective(SCORE) == SCORE
    assert check_objective("val/gap_forget_auc") == "val/gap_forget_auc"


def test_search_space_is_centred_on_the_config():
    space = get_method("FineTune").search_space({"lr": 1e-3})
    assert space["lr"] == FloatKnob(1e-4, 1e-1, log=True)
    assert "lr" not in get_method("SSD").search_space({})  # training-free, no learning rate
    # without a configured rate: the method's default, its base's when it forwards lr through **kwargs
    forwarded, own = get_method("NegGradPlus").search_space({})["lr"], get_method("SCRUB").search_space({})["lr"]
    assert (forwarded.low, forwarded.high) == pytest.approx((1e-5, 1e-2))  # UnlearningMethod's 1e-4
    assert (own.low, own.high) == pytest.approx((5e-5, 5e-2))  # SCRUB's own 5e-4


def test_a_method_is_tuned_from_its_own_config():
    # the search is centred on configs/unlearn/<method>.yaml and best.yaml extends it: RefDistill's config makes an
    # epoch one pass over the forget patients and clips gradients; a tuned config without them is another method
    name, path, content = config_for("RefDistill", None)
    assert path == ROOT / "configs" / "unlearn" / "ref_distill.yaml" and path.is_file()
    assert content["data"]["unlearn_epoch"] == "forget" and content["trainer"]["gradient_clip_val"] == 1.0
    assert config_for("FineTune", None)[1] == ROOT / "configs" / "unlearn" / "finetune.yaml"


@pytest.mark.parametrize(("selected", "expected"), [(2, 3), (0, 1), (5, 5), (None, 5)])
def test_trained_epochs_is_the_exported_epoch_count(selected, expected):
    # selected 5 of max_epochs 5: a run without selection reports the trainer's epoch counter after the last epoch
    attrs = {} if selected is None else {"selected_epoch": selected}
    trial = optuna.trial.create_trial(params={"max_epochs": 5}, value=0.1, user_attrs=attrs,
                                      distributions={"max_epochs": optuna.distributions.IntDistribution(1, 6)})
    assert trained_epochs(trial) == expected
