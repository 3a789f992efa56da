"""The one registry helper (methods of both tasks, membership attacks): lookup, did-you-mean errors as a new user
meets them on the command line, and registration rules."""

from __future__ import annotations

import pytest

from medforget.cli import main
from medforget.core.registry import Registry, UnknownNameError, import_submodules, unknown_name_message


def test_lookup_and_did_you_mean():
    registry: Registry[int] = Registry("method")
    registry.register("FineTune", 1)
    registry.register("GradientAscent", 2)
    assert registry.get("FineTune") == 1 and registry["GradientAscent"] == 2
    assert list(registry) == ["FineTune", "GradientAscent"] and len(registry) == 2 and "FineTune" in registry
    with pytest.raises(UnknownNameError) as err:
        registry.get("FineTun")
    assert str(err.value) == ("unknown method 'FineTun'; did you mean 'FineTune'? "
                              "(registered: FineTune, GradientAscent)")
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)  # both kinds the CLI reports
    assert unknown_name_message("attack", "xyz", ["b", "a"]) == "unknown attack 'xyz' (registered: a, b)"


def test_registering_twice_is_an_error_and_private_classes_are_skipped():
    registry: Registry[type] = Registry("attack")

    class Loss:
        pass

    class _Helper:
        pass

    registry.register_class(Loss)
    registry.register_class(_Helper)
    assert registry.names() == ["Loss"]
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("Loss", int)


def test_import_submodules_skips_private_modules(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "public.py").write_text("LOADED = True\n")
    (package / "_helper.py").write_text("raise RuntimeError('a private helper module is not imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_submodules("plugins", [str(package)]) == ["public"]


def test_the_three_registries_keep_every_name_registered_before():
    from medforget.audit.classifier.mia import MembershipAttack
    from medforget.methods.classifier import UnlearningMethod
    from medforget.methods.lm import LMUnlearningMethod

    # every name registered before the redesign is still there (configs and audit files name them); new methods
    # may join without touching this file
    assert {"BadTeacher", "BoundaryShrink", "FineTune", "FisherForgetting", "ForgetMI", "ForgettingLayers",
            "GradientAscent", "L1Sparse", "MultiDelete", "MultiGAN", "NegGradPlus", "RandomLabel", "SCRUB", "SSD",
            "SalUn", "UNSIR"} <= set(UnlearningMethod.registry.names())
    assert {"FLAT", "GRIN", "GradAscent", "GradDiff", "IdkDPO", "NPO", "RMU", "SURE",
            "SimNPO"} <= set(LMUnlearningMethod.registry.names())
    assert {"ConfidenceAttack", "EntropyAttack", "LiRAAttack", "LogisticRegressionAttack", "LossAttack",
            "ModifiedEntropyAttack", "RMIAAttack", "SVCAttack"} <= set(MembershipAttack.registry.names())
    for registry in (UnlearningMethod.registry, LMUnlearningMethod.registry, MembershipAttack.registry):
        assert registry.names() == sorted(registry.names())  # listed in a stable (sorted) order


@pytest.mark.parametrize("argv, expected", [
    (["unlearn", "--method", "FineTun", "--ckpt", "x.ckpt", "--forget", "f.txt"],
     "unknown method 'FineTun'; did you mean 'FineTune'?"),
    (["unlearn", "--method=GradientAscnt", "--ckpt", "x.ckpt", "--forget", "f.txt"],
     "unknown method 'GradientAscnt'; did you mean 'GradientAscent'?"),
    (["unlearn-lm", "--method", "NPQ", "--ckpt", "x.ckpt"], "unknown method 'NPQ'; did you mean 'NPO'"),
])
def test_cli_unknown_method_is_one_line_with_suggestion(argv, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value.code)
    assert expected in message and "registered:" in message and message.count("\n") == 0
    assert "usage" not in capsys.readouterr().out.lower()  # not 90 lines of usage


def test_lm_attack_names_use_the_registry():
    from medforget.audit.lm.config import LMAuditConfig
    from medforget.audit.lm.mia import ATTACKS, attack_scores

    assert list(ATTACKS) == ["loss", "zlib", "min_k", "min_k_plus_plus", "reference"]  # the report's order
    with pytest.raises(ValueError, match="unknown attack 'zlb'; did you mean 'zlib'"):
        LMAuditConfig(attacks=["zlb"])
    with pytest.raises(ValueError, match="did you mean 'min_k'"):
        attack_scores("min_kk", [], [], 0.4)
