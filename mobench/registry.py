"""Name -> method / task / preset registries.

Built-in entries are lazy module paths, so listing names never imports torch. A module
registers its class with a decorator when it is imported; third-party packages plug in through
the entry-point groups ``mobench.methods`` and ``mobench.tasks`` (value ``"module:Class"``).
Unknown names raise :class:`UnknownNameError` with the closest match and the known names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from mobench.config import Preset
    from mobench.interfaces import Method, Task

T = TypeVar("T")


class UnknownNameError(LookupError):
    """An unknown method, task or preset name. ``str(err)`` is the one-line message."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        super().__init__(f"unknown {kind} '{name}'{hint} known: {', '.join(known) or 'none'}")


class Registry(Generic[T]):
    """A registry of one kind of plugin, filled by decorators, built-ins and entry points."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)  # name -> module that registers it on import
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@METHODS.register("genarm")``."""

        def decorator(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorator

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        return sorted(set(self._builtins) | set(self._entries) | set(self._entry_points()))

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        if name in self._builtins:
            importlib.import_module(self._builtins[name])
            if name not in self._entries:
                raise RuntimeError(f"{self._builtins[name]} did not register {self.kind} '{name}'")
            return self._entries[name]
        eps = self._entry_points()
        if name in eps:
            obj = eps[name].load()
            self._entries.setdefault(name, obj)
            return self._entries[name]
        raise UnknownNameError(self.kind, name, self.names())


METHODS: Registry[type[Method]] = Registry(
    "method",
    "mobench.methods",
    {
        "base": "mobench.methods.base",
        "genarm": "mobench.methods.genarm",
        "parm": "mobench.methods.parm",
        "uniarm": "mobench.methods.uniarm",
        "mod_w2s": "mobench.methods.mod_w2s",
        "prompt": "mobench.methods.prompt",
        "rs": "mobench.methods.rs",
        "mod": "mobench.methods.mod",
    },
)

TASKS: Registry[type[Task]] = Registry(
    "task",
    "mobench.tasks",
    {
        "safety": "mobench.tasks.safety",
        "helpful": "mobench.tasks.helpful",
    },
)

# Presets are keyed by (task, name); a task module registers its presets when imported.
_PRESETS: dict[tuple[str, str], Preset] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    return METHODS.register(name)


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    return TASKS.register(name)


def register_preset(preset: Preset) -> Preset:
    """Register a preset (a data object) for its task; returns it for module-level use."""
    _PRESETS[(preset.task, preset.name)] = preset
    return preset


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def get_task(name: str) -> type[Task]:
    return TASKS.get(name)


def get_preset(task: str, name: str) -> Preset:
    get_task(task)  # importing the task module registers its presets
    if (task, name) not in _PRESETS:
        raise UnknownNameError(f"preset for task '{task}'", name, preset_names(task))
    return _PRESETS[(task, name)]


def preset_names(task: str) -> list[str]:
    get_task(task)
    return sorted(n for (t, n) in _PRESETS if t == task)


def all_presets() -> list[Preset]:
    """Every preset of every known task (imports the task modules, which are light)."""
    for task in TASKS.names():
        get_task(task)
    return [_PRESETS[k] for k in sorted(_PRESETS)]
