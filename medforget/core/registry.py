"""One registry helper for everything chosen by name: classifier and language-model unlearning methods, membership
attacks. Like timm's ``register_model`` / ``list_models``: a name maps to an object, and an unknown name is an error
that suggests the closest registered names and lists them all.

A base class keeps a :class:`Registry` and registers its public subclasses in ``__init_subclass__``; the package
of the implementations calls :func:`import_submodules` so that every public module (one per method or attack) is
imported, while private helper modules (``_common.py`` ...) are left to the modules that use them.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message suggests the closest registered names and lists them all."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_name_message(kind: str, name: str, names: Iterable[str]) -> str:
    """``unknown method 'FineTun'; did you mean 'FineTune'? registered: ...``."""
    names = sorted(names)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (registered: {', '.join(names)})"


class Registry(Generic[T]):
    """Registered objects by name.

    Args:
        kind: What is registered, as error messages name it (``"method"``, ``"attack"``).
        package: The package whose import registers every implementation (imported on the first lookup, by name, so
            a base module need not import its own implementations).
    """

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Register ``obj`` as ``name`` (a name registered twice is an error unless it is the same object)."""
        if name in self._items and self._items[name] is not obj:
            previous = self._items[name]
            if getattr(previous, "__qualname__", None) != getattr(obj, "__qualname__", object()) or getattr(
                    previous, "__module__", None) != getattr(obj, "__module__", object()):
                raise ValueError(f"{self.kind} {name!r} is registered twice ({previous!r} and {obj!r})")
        self._items[name] = obj
        return obj

    def register_class(self, cls: Any) -> None:
        """Register a class under its name, unless the name is private (``_Helper``: a shared base, not a choice)."""
        if not cls.__name__.startswith("_"):
            self.register(cls.__name__, cls)

    def load(self) -> Registry[T]:
        """Import :attr:`package` (which registers its implementations); returns the registry."""
        if self.package is not None:
            importlib.import_module(self.package)
        return self

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self.load()._items)

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered (the message suggests close names and lists them all).
        """
        if name not in self._items:
            self.load()
        if name not in self._items:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._items))
        return self._items[name]

    def check(self, names: Iterable[str]) -> list[str]:
        """``names`` as a list, after checking that every one is registered (:meth:`get`)."""
        names = list(names)
        for name in names:
            self.get(name)
        return names

    # a mapping in registration order, like the dict it replaces
    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def values(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def keys(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __setitem__(self, name: str, obj: T) -> None:
        self._items[name] = obj

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


def import_submodules(package: str, path: Iterable[str]) -> list[str]:
    """Import every public module of a package (``_private`` helper modules are skipped: they register nothing a
    user can choose); call it from the package's ``__init__`` with ``__name__, __path__``."""
    names = [m.name for m in pkgutil.iter_modules(list(path)) if not m.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
