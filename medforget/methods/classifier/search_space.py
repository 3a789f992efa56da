"""Search-space knobs of ``python -m medforget tune`` (see :mod:`medforget.commands.tune`).

Every method declares what the tuner may vary with the classmethod
:meth:`~medforget.methods.classifier.base.UnlearningMethod.search_space`: a mapping from an ``__init__`` argument name
to a knob. The default (:func:`default_space`) is the learning rate, log-uniform around the value the method's config
gives; a method adds its own documented weights by overriding it in its own file, so adding a method still touches one
file plus its config. The number of unlearning epochs (``trainer.max_epochs``) is searched by the tuner itself for
every method that trains (not for one-shot methods)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from medforget.methods.base import init_parameters


@dataclass(frozen=True)
class FloatKnob:
    """A float in ``[low, high]`` (log-uniform with ``log``)."""

    low: float
    high: float
    log: bool = False

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class IntKnob:
    """An integer in ``[low, high]``."""

    low: int
    high: int

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high)


@dataclass(frozen=True)
class ChoiceKnob:
    """One of ``choices`` (str, int, float, bool or None)."""

    choices: tuple[Any, ...]

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))


Knob = FloatKnob | IntKnob | ChoiceKnob

#: The learning-rate range around the configured value: the configs' rates suit pretrained-scale models and barely
#: move a small from-scratch classifier (benchmarks/leaderboard.py used x10 and x50), so the range leans upwards.
LR_RANGE = (0.1, 100.0)


def init_default(cls: type, name: str, init_args: dict[str, Any]) -> Any:
    """``init_args[name]`` when the config sets it, else the default of the method's argument ``name`` (its own, or
    its base's when it forwards it through ``**kwargs``: :func:`~medforget.methods.base.init_parameters`)."""
    if init_args.get(name) is not None:
        return init_args[name]
    parameter = init_parameters(cls).get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def default_space(cls: type, init_args: dict[str, Any]) -> dict[str, Knob]:
    """The learning rate (log-uniform, :data:`LR_RANGE` times the configured rate) for a method that has one."""
    lr = init_default(cls, "lr", init_args)
    if lr is None:
        return {}
    return {"lr": FloatKnob(float(lr) * LR_RANGE[0], float(lr) * LR_RANGE[1], log=True)}
