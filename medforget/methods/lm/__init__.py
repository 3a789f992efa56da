"""Language-model unlearning methods: one file per method, registered by class name in
``LMUnlearningMethod.registry`` on import (a new method file touches no other file)."""

from medforget.core.registry import import_submodules
from medforget.methods.lm.base import LMUnlearningMethod

import_submodules(__name__, __path__)
globals().update({name: LMUnlearningMethod.registry[name] for name in LMUnlearningMethod.registry})

__all__ = ["LMUnlearningMethod", *sorted(LMUnlearningMethod.registry)]
