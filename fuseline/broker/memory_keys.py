"""Idempotency keys in ``MemoryBroker``: at most one instance per (workflow_id, key).

Dispatching a key again with equal inputs (compared after the JSON round
trip) names the instance it already has, so a retried request creates
nothing; other inputs are a :class:`~fuseline.errors.KeyConflict`. The ids
are decided for a whole ``dispatch_many`` call before anything is written,
so a conflict, even between two of its items, leaves no instance behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import KeyConflict
from .dispatching import Dispatch
from .ids import new_id


class KeyIndex:
    def __init__(self, inputs_of: Callable[[str], Any], load: Callable[[Any], Any]) -> None:
        #: Stored inputs of an existing instance, and how to read stored inputs back.
        self.inputs_of, self.load = inputs_of, load
        self._ids: dict[tuple[str, str], str] = {}

    def ids_for(self, workflow_id: str, dispatches: Sequence[Dispatch], inputs: Sequence[Any]) -> list[str]:
        """One id per dispatch: a new one, or the instance its key names (raises KeyConflict)."""
        ids: list[str] = []
        named: dict[str, tuple[str, Any]] = {}  # key -> (instance id, its stored inputs)
        for dispatch, stored in zip(dispatches, inputs, strict=True):
            if dispatch.key is None:
                ids.append(new_id())
                continue
            if dispatch.key not in named:
                existing = self._ids.get((workflow_id, dispatch.key))
                named[dispatch.key] = (existing, self.inputs_of(existing)) if existing else (new_id(), stored)
            instance_id, taken_with = named[dispatch.key]
            if self.load(taken_with) != self.load(stored):
                raise KeyConflict(workflow_id, dispatch.key, instance_id)
            ids.append(instance_id)
        return ids

    def remember(self, workflow_id: str, key: str | None, instance_id: str) -> None:
        if key is not None:
            self._ids[(workflow_id, key)] = instance_id
