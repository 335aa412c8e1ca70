"""Name → class registries for trainers and datasets, as Dassl's ``Registry``."""

from __future__ import annotations

import difflib
from typing import Any, Callable, TypeVar

from vlprompt.errors import UserKeyError

T = TypeVar("T")


class Registry:
    """A named table of classes; ``register`` is a decorator, ``get`` suggests close names on a miss."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj: T | None = None, force: bool = False) -> T | Callable[[T], T]:
        """Register ``obj`` under its ``__name__``; usable bare or as ``@register()``."""
        if obj is None:

            def wrapper(fn_or_class: T) -> T:
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a KeyError lists the valid names and the closest one."""
        if name not in self._obj_map:
            raise UserKeyError(self.unknown_message(name))
        return self._obj_map[name]

    def unknown_message(self, name: str) -> str:
        valid = self.registered_names()
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        return (
            f'"{name}" is not a registered {self._name.lower()} name.{hint} '
            f"Valid names: {', '.join(valid) or '(none)'}"
        )

    def registered_names(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map


TRAINER_REGISTRY = Registry("TRAINER")
DATASET_REGISTRY = Registry("DATASET")
