"""Language-model unlearning methods: one file per method, registered by class name in
``LMUnlearningMethod.registry`` on import (a new method file touches no other file)."""

import importlib
import pkgutil

from medforget.llm.methods.base import LMUnlearningMethod

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update(LMUnlearningMethod.registry)

__all__ = ["LMUnlearningMethod", *sorted(LMUnlearningMethod.registry)]
