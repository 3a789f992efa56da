"""Every unlearning method declares only its own arguments and forwards its base's through ``**kwargs`` (the rule of
:class:`~medforget.methods.base.UnlearningBase`), registry-parametrized over both tasks: LightningCLI still lists
every argument with the right default (``--print_config``), the saved hyperparameters hold them and survive a
Lightning checkpoint, and no method re-declares a base argument with the base's default."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import torch
import yaml

import medforget.methods.lm  # noqa: F401  (registers the language-model methods)
from medforget.methods.base import UnlearningBase, init_parameters
from medforget.methods.classifier import UnlearningMethod
from medforget.methods.lm.base import LMUnlearningMethod

TASKS = {"unlearn": UnlearningMethod, "unlearn-lm": LMUnlearningMethod}
METHODS = [pytest.param(verb, name, id=f"{verb}:{name}")
           for verb, base in TASKS.items() for name in sorted(base.registry)]


def own_parameters(klass: type) -> tuple[dict[str, inspect.Parameter], bool]:
    """The arguments ``klass.__init__`` itself declares (``{}`` when it defines none) and whether it takes
    ``**kwargs``."""
    init = vars(klass).get("__init__")
    if init is None:
        return {}, True  # inherits its parent's __init__: declares nothing
    params = inspect.signature(init).parameters.values()
    own = {p.name: p for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return own, any(p.kind is p.VAR_KEYWORD for p in params)


def chain(cls: type, base: type) -> list[type]:
    """``cls`` and its bases below the task base ``base`` (SalUn: SalUn, RandomLabel)."""
    return [k for k in cls.__mro__ if issubclass(k, base) and k is not base]


def narrows(cls: type) -> bool:
    """Methods without optimizer settings (training-free or retraining) narrow the base's arguments to ``ckpt``."""
    return bool(getattr(cls, "one_shot", False) or getattr(cls, "retrains", False))


def plain(value: Any) -> Any:
    """A default as YAML prints it (tuples become lists)."""
    return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def print_config(verb: str, name: str, capsys) -> dict:
    from medforget.commands import unlearn, unlearn_lm

    with pytest.raises(SystemExit) as exc:
        {"unlearn": unlearn, "unlearn-lm": unlearn_lm}[verb](["--method", name, "--ckpt=x.ckpt", "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize(("verb", "name"), METHODS)
def test_print_config_lists_every_argument_with_its_default(verb, name, capsys):
    base = TASKS[verb]
    cls = base.registry[name]
    printed = print_config(verb, name, capsys)
    assert printed["model"]["class_path"].rsplit(".", 1)[-1] == name
    init_args = printed["model"].get("init_args") or {}
    assert printed["ckpt"] == "x.ckpt"  # --ckpt is linked to model.init_args.ckpt, which is therefore not printed
    listed = set(init_args) | {"ckpt"}
    own = set().union(*(own_parameters(k)[0] for k in chain(cls, base)))
    base_args = set(own_parameters(base)[0])
    if narrows(cls):  # its own arguments and ckpt: no optimizer setting that would be ignored
        assert listed == own | {"ckpt"}
    else:  # its own arguments and every argument of the task base
        assert listed == own | base_args
    expected = init_parameters(cls)
    assert listed == set(expected)
    assert {k: plain(v) for k, v in init_args.items()} == {k: plain(expected[k].default) for k in init_args}
    # a forwarded base argument keeps the base's default; a re-declared one, the method's own
    base_defaults = {k: p.default for k, p in own_parameters(base)[0].items()}
    for key in set(init_args) & base_args:
        redeclared = [own_parameters(k)[0][key] for k in chain(cls, base) if key in own_parameters(k)[0]]
        assert init_args[key] == plain(redeclared[0].default if redeclared else base_defaults[key]), key


@pytest.mark.filterwarnings("ignore:The state dict in .* contains no parameters")  # no ckpt: no model attached
@pytest.mark.parametrize(("verb", "name"), METHODS)
def test_saved_hyperparameters_hold_every_argument_and_survive_a_checkpoint(verb, name, tmp_path):
    cls = TASKS[verb].registry[name]
    expected = init_parameters(cls)
    changed = {} if narrows(cls) else {"lr": 0.123, "weight_decay": 0.25}  # forwarded through **kwargs
    method = cls(**changed)  # no ckpt: nothing is loaded
    hparams = dict(method.hparams)
    assert set(expected) <= set(hparams)
    assert {k: hparams[k] for k in expected} == {**{k: p.default for k, p in expected.items()}, **changed}
    if changed:  # the forwarded values reach the base (the optimizer reads them there)
        settings = method.optimizer_settings if isinstance(method, UnlearningMethod) else method.settings
        assert {k: settings[k] for k in changed} == changed
    # a Lightning checkpoint rebuilds the method from its saved hyperparameters (cls(**hparams))
    path = tmp_path / "method.ckpt"
    torch.save({"state_dict": method.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": "2.6.6"}, path)
    again = cls.load_from_checkpoint(path, weights_only=True)
    assert type(again) is cls and {k: again.hparams[k] for k in expected} == {k: hparams[k] for k in expected}


def test_saved_hyperparameters_hold_the_base_arguments_under_the_cli(tiny_hospital, forget_file, trained_ckpt,
                                                                      tmp_path):
    """Through the unlearn verb (LightningCLI hands the parsed config to save_hyperparameters), a method that declares
    none of the optimizer settings still records them, with the values given on the command line."""
    from medforget.commands import unlearn
    from medforget.core.checkpoint import read_checkpoint
    from tests.conftest import TINY_DATA

    target = unlearn(["--method=NegGradPlus", f"--ckpt={trained_ckpt}", f"--forget={forget_file}",
                      "--model.lr=0.0003", "--model.momentum=0.5", f"--data.manifest={tiny_hospital}", *TINY_DATA,
                      "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
                      f"--out={tmp_path}"])
    saved = read_checkpoint(target)["medforget"]["provenance"]["method_hparams"]
    expected = init_parameters(UnlearningMethod.registry["NegGradPlus"])
    assert {"lr", "optimizer", "weight_decay", "momentum"} < set(expected) <= set(saved)
    assert saved["lr"] == pytest.approx(3e-4) and saved["momentum"] == 0.5 and saved["alpha"] == 0.95
    assert saved["ckpt"] == str(trained_ckpt)


def shared_classes() -> list[pytest.param]:
    """Every registered method and every shared base between it and its task base (TeacherStudent, OneShot,
    RandomLabel, SelectThenFineTune, ...), once each."""
    seen: dict[type, type] = {}
    for base in TASKS.values():
        for cls in base.registry.values():
            for klass in chain(cls, base):
                seen.setdefault(klass, base)
    return [pytest.param(k, b, id=k.__name__) for k, b in sorted(seen.items(), key=lambda kb: kb[0].__name__)]


@pytest.mark.parametrize(("klass", "base"), shared_classes())
def test_no_method_redeclares_a_base_argument_with_the_base_default(klass, base):
    own, forwards = own_parameters(klass)
    if "__init__" not in vars(klass):
        return  # nothing declared: every argument is its parent's
    parent = next(k for k in klass.__mro__[1:] if "__init__" in vars(k))
    inherited = init_parameters(parent)
    if not forwards:  # narrowing: a method without optimizer settings passes ckpt alone
        assert issubclass(klass, UnlearningBase) and base is UnlearningMethod
        assert set(own) & set(inherited) == {"ckpt"}, f"{klass.__name__} narrows to ckpt only"
        assert all(narrows(cls) for cls in base.registry.values() if issubclass(cls, klass)), (
            f"{klass.__name__}.__init__ has no **kwargs, but a training method under it would lose the optimizer "
            "settings: forward them with super().__init__(**kwargs)")
        return
    same = [k for k in set(own) & set(inherited) if own[k].default == inherited[k].default]
    assert not same, (f"{klass.__name__} re-declares {same} with {parent.__name__}'s default: drop them from its "
                      "__init__ (they come through **kwargs)")
    assert "ckpt" not in own, f"{klass.__name__} re-declares ckpt: it comes through **kwargs"


def documented_args(klass: type) -> list[str]:
    """The names of the ``Args:`` section of ``klass``'s own docstring (``**kwargs`` as ``**kwargs``)."""
    doc = inspect.cleandoc(vars(klass).get("__doc__") or "")
    section = doc.split("Args:\n", 1)[1] if "Args:\n" in doc else ""
    return re.findall(r"^    (\*\*\w+|\w+):", section, flags=re.M)


@pytest.mark.parametrize(("klass", "base"), shared_classes())
def test_docstring_lists_its_own_arguments_and_what_kwargs_forwards(klass, base):
    if "__init__" not in vars(klass):
        assert "Args:" not in (vars(klass).get("__doc__") or "") or not documented_args(klass)
        return
    own, forwards = own_parameters(klass)
    args = documented_args(klass)
    assert set(args) - {"**kwargs"} == set(own), f"{klass.__name__}'s Args: {args}, its own arguments: {list(own)}"
    if forwards:
        assert args[-1] == "**kwargs", f"{klass.__name__}'s Args: must end with **kwargs (what it forwards)"
        forwarded = set(init_parameters(klass)) - set(own)
        line = (vars(klass)["__doc__"]).split("**kwargs:", 1)[1]
        assert all(f"``{k}``" in line for k in forwarded), f"{klass.__name__}'s **kwargs line must name {forwarded}"
