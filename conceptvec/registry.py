"""Registries: the extension points that the built-in methods, attacks and metrics use too.

A :class:`Registry` maps a name to a thing (an unlearning method, an attack, a metric).
The built-ins register themselves at import time of their own module; your code does the
same, and ``conceptvec unlearn`` / ``conceptvec eval`` then accept the new name::

    from conceptvec.unlearning import register_method

    @register_method("my-ga", paper="me 2026")
    def my_loss(ctx, batches):
        ...

Code outside conceptvec reaches the CLI in two ways: ``--plugin my_module`` (any number of
times) imports ``my_module`` before the command runs, and a package can declare an entry
point in the ``conceptvec.plugins`` group (its value a module, or a function called with no
arguments), loaded the first time a registry is asked for a name it does not hold.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from conceptvec.errors import ConceptvecError, PluginImportError

T = TypeVar("T")

ENTRY_POINTS = "conceptvec.plugins"
"""The entry-point group whose members are imported to register their methods and attacks."""

_loaded: set[str] = set()
"""The entry points loaded so far (their values)."""
_scanned = False


class Registry(Mapping[str, T], Generic[T]):
    """Names to things of one ``kind`` (e.g. ``"unlearning method"``), read like a dict.

    ``registry[name]`` raises ``error`` naming every registered name; :meth:`add` refuses a name
    that is taken by something else unless ``replace=True``.
    """

    def __init__(self, kind: str, error: type[Exception] = ConceptvecError) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        """Register ``item`` as ``name`` and return it."""
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise self.error(f"a {self.kind} name must be a non-empty word, not {name!r}")
        old = self._items.get(name)
        if old is not None and old is not item and not replace:
            raise self.error(
                f"a {self.kind} called {name!r} is already registered; choose another name "
                "or pass replace=True"
            )
        self._items[name] = item
        return item

    def remove(self, name: str) -> T:
        """Unregister ``name`` and return what it named."""
        item = self[name]
        del self._items[name]
        return item

    def __getitem__(self, name: str) -> T:
        """Return the thing called ``name``, or raise ``error`` listing the registered names
        (after loading the ``conceptvec.plugins`` entry points once)."""
        if name not in self._items:
            load_entry_points()
        if name not in self._items:
            raise self.error(f"unknown {self.kind} {name!r}; use one of {', '.join(self)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            load_entry_points()
        return name in self._items

    def check(self, names: Sequence[str]) -> list[str]:
        """Return ``names`` as a list after checking that every one is registered."""
        for n in names:
            self[n]
        return list(names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


def load_plugins(modules: Sequence[str] = ()) -> list[str]:
    """Import the plugin ``modules`` (dotted names, e.g. ``--plugin my_pkg.methods``) and the
    ``conceptvec.plugins`` entry points; return the names imported. A module that fails to
    import raises :class:`PluginImportError` with its error in one line."""
    done = load_entry_points()
    for name in modules:
        _import(name)
        done.append(name)
    return done


def load_entry_points(again: bool = False) -> list[str]:
    """Load every ``conceptvec.plugins`` entry point not loaded yet (the installed packages
    are scanned once per process unless ``again``); return their values."""
    global _scanned
    if _scanned and not again:
        return []
    _scanned = True
    done = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if ep.value in _loaded:
            continue
        _loaded.add(ep.value)
        try:
            obj = ep.load()
        except Exception as e:  # a broken third-party package: say which, in one line
            raise PluginImportError(
                f"the {ENTRY_POINTS} entry point {ep.name!r} ({ep.value}) failed to load: "
                f"{type(e).__name__}: {e}; fix or uninstall that package"
            ) from None
        if callable(obj) and not isinstance(obj, type):
            obj()
        done.append(ep.value)
    return done


def _import(name: str) -> object:
    """Import the module ``name``, or the Python file ``name`` when it ends with ``.py``."""
    try:
        if name.endswith(".py"):
            return _import_file(Path(name))
        return importlib.import_module(name)
    except ConceptvecError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise PluginImportError(
            f"plugin {name!r} could not be imported ({type(e).__name__}: {first}); pass an "
            "importable module name (its folder on PYTHONPATH) or a .py file, e.g. "
            "--plugin my_package.methods"
        ) from None


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise PluginImportError(f"plugin file {path} does not exist; check --plugin")
    name = f"conceptvec_plugin_{path.stem}"
    old = sys.modules.get(name)
    if old is not None and getattr(old, "__file__", None) == str(path.resolve()):
        return old  # imported before in this process: its registrations stand
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise PluginImportError(f"plugin file {path} cannot be imported; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def decorator(registry: Registry[T], name: str, make: Callable[[Callable], T]) -> Callable:
    """Return a decorator that registers ``make(function)`` as ``name`` and gives back the
    function unchanged (the ``@register_...("name")`` form)."""

    def wrap(fn: Callable) -> Callable:
        registry.add(name, make(fn))
        return fn

    return wrap
