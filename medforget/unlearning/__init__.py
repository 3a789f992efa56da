"""Unlearning methods: one file per method, registered by class name in ``UnlearningMethod.registry``.

Every module of this package is imported here, so a new method file is registered (and exposed as
``medforget.unlearning.<Name>``) without touching any other file.
"""

import importlib
import pkgutil

from medforget.unlearning.base import UnlearningMethod, get_method, list_methods

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update(UnlearningMethod.registry)

__all__ = ["UnlearningMethod", "get_method", "list_methods", *sorted(UnlearningMethod.registry)]
