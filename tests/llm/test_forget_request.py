"""Patient-ID forget requests for the language model (``unlearn-lm --forget FILE``, ``--data.forget``): the split,
the errors (entries named by position, never by ID), the precedence over ``--data.forget_fraction``, and the audit
using the same request."""

from __future__ import annotations

import contextlib
import io

import pytest

from medforget.cli import main
from medforget.commands import evaluate_lm, unlearn_lm
from medforget.datamodules.splits import ForgetRequestError, write_patient_ids
from medforget.systems.lm import load_lm
from tests.llm.conftest import TINY_LM_DATA, tiny_lm_datamodule
from tests.llm.test_audit import FAST
from tests.llm.test_methods import sha256

TRAINER = ["--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]


def parts(**kwargs) -> tuple[dict[str, list[str]], object]:
    dm = tiny_lm_datamodule(**kwargs)
    dm.setup()
    return {name: sorted(dm.records[p].patient_id for p in pos) for name, pos in dm.parts.items()}, dm


def test_a_request_is_the_forget_set_and_keeps_the_holdout(tmp_path):
    by_fraction, _ = parts()
    chosen = by_fraction["retain"][:4]
    request = tmp_path / "forget.txt"
    request.write_text("# forget request\n" + "\n".join(reversed(chosen)) + f"\n{chosen[0]}\n\n")  # dup, comment
    by_request, dm = parts(forget=str(request), forget_fraction=None)
    assert by_request["forget"] == sorted(chosen)
    assert by_request["holdout"] == by_fraction["holdout"]  # one original model serves any request
    assert sorted(by_request["retain"] + by_request["forget"]) == sorted(by_fraction["retain"] +
                                                                         by_fraction["forget"])
    assert dm.forget_fraction == pytest.approx(4 / 30)
    assert dm.forget_provenance() == {"forget_by": "patient_ids", "forget_fraction": 4 / 30, "forget_patients": 4,
                                      "forget_fingerprint": dm.forget_fingerprint}
    same = tmp_path / "same.txt"
    write_patient_ids(by_fraction["forget"], same)  # the fraction's patients, as IDs: the same forget set
    assert parts(forget=str(same), forget_fraction=None)[1].forget_fingerprint == parts()[1].forget_fingerprint


def test_unknown_and_holdout_entries_are_named_by_position_not_id(tmp_path):
    by_fraction, _ = parts()
    request = write_patient_ids([by_fraction["retain"][0], "N9999", by_fraction["holdout"][0]], tmp_path / "f.txt")
    with pytest.raises(ForgetRequestError) as info:
        parts(forget=str(request))
    message = str(info.value)
    assert "entries [2] are not patients of this corpus" in message
    assert "entries #3 (holdout) are not in the training split" in message and "holdout patients cannot" in message
    assert "N9999" not in message and by_fraction["holdout"][0] not in message
    everyone = write_patient_ids(by_fraction["retain"] + by_fraction["forget"], tmp_path / "all.txt")
    with pytest.raises(ForgetRequestError, match="nothing would be retained"):
        parts(forget=str(everyone))


def test_a_fraction_that_contradicts_the_request_is_an_error(tmp_path):
    by_fraction, _ = parts()
    request = write_patient_ids(by_fraction["retain"][:3], tmp_path / "f.txt")
    assert parts(forget=str(request), forget_fraction=0.1)[0]["forget"] == sorted(by_fraction["retain"][:3])  # 3/30
    with pytest.raises(ValueError, match="contradicts the forget request"):
        parts(forget=str(request), forget_fraction=0.2)


def test_unlearn_lm_takes_a_request_and_evaluate_lm_audits_that_request(tiny_lm_ckpt, tiny_retain_lm_ckpt, tmp_path):
    by_fraction, _ = parts()
    request = write_patient_ids(list(reversed(by_fraction["forget"])), tmp_path / "forget.txt")
    digest = sha256(tiny_lm_ckpt)
    target = unlearn_lm(["--method", "GradAscent", f"--ckpt={tiny_lm_ckpt}", f"--forget={request}",
                         f"--out={tmp_path / 'unlearned'}", *TINY_LM_DATA, "--data.batch_size=8", *TRAINER])
    assert sha256(tiny_lm_ckpt) == digest
    data = load_lm(target).provenance["data"]
    assert data["forget_by"] == "patient_ids" and data["forget_patients"] == 3 and "forget" not in data
    assert str(request) not in str(load_lm(target).provenance)  # file names can name patients

    common = [f"--original={tiny_lm_ckpt}", f"--unlearned={target}", f"--retain={tiny_retain_lm_ckpt}", *FAST,
              "--audit.quantization=[]", "--audit.plots=false"]
    with pytest.raises(SystemExit, match="pass the same request with --forget FILE"):
        main(["evaluate-lm", *common, f"--out={tmp_path / 'no_request'}"])
    other = write_patient_ids(by_fraction["retain"][:3], tmp_path / "other.txt")
    with pytest.raises(SystemExit, match="another forget set"):
        main(["evaluate-lm", *common, f"--forget={other}", f"--out={tmp_path / 'other'}"])
    with contextlib.redirect_stdout(io.StringIO()):
        report = evaluate_lm([*common, f"--forget={request}", f"--out={tmp_path / 'audit'}"])
    assert report["forget_request"]["patients"] == 3
    assert report["config"]["cli"]["data"]["forget"] == str(request)


def test_unlearn_lm_rejects_a_bad_request_before_training(tiny_lm_ckpt, tmp_path):
    request = write_patient_ids(["N9999"], tmp_path / "forget.txt")
    with pytest.raises(SystemExit, match=r"entries \[1\] are not patients of this corpus"):
        main(["unlearn-lm", "--method", "NPO", f"--ckpt={tiny_lm_ckpt}", f"--forget={request}",
              f"--out={tmp_path / 'out'}", *TINY_LM_DATA, *TRAINER])
    assert not (tmp_path / "out" / "model.ckpt").exists()
