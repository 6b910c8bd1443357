"""A tiny in-process event hook so the CLI can draw progress without the flow knowing how."""

from __future__ import annotations

from typing import Callable

Listener = Callable[[str, dict], None]
_listeners: list[Listener] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def emit(event: str, **data: object) -> None:
    for listener in list(_listeners):
        listener(event, data)
