"""Unlearning methods: one file per method, registered by class name in ``UnlearningMethod.registry``.

Every module of this package is imported here, so a new method file is registered (and exposed as
``medforget.methods.classifier.<Name>``) without touching any other file.
"""

from medforget.core.registry import import_submodules
from medforget.methods.classifier.base import UnlearningMethod, get_method, list_methods

import_submodules(__name__, __path__)
globals().update({name: UnlearningMethod.registry[name] for name in UnlearningMethod.registry})

__all__ = ["UnlearningMethod", "get_method", "list_methods", *sorted(UnlearningMethod.registry)]
