"""The records brokers exchange, as JSON for HTTP, both ways: one module the server and
:class:`~fuseline.clients.HttpBrokerClient` share, so they cannot drift apart.

Records are the broker contract's frozen dataclasses. Encoding walks their
fields; decoding reads each field by its declared type (times as ISO 8601,
states and actions as their values, nested records by their class), so a
record that gains a field travels without touching this module. Values
typed ``Any`` (inputs, results, signal data) are JSON already and pass as
they are.

Errors travel too: a broker error becomes ``{"type", "message", "fields"}``
and is raised again on the client as the same class with the same
attributes, so ``except LeaseLost`` works the same through the server.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from datetime import datetime
from typing import Any, TypeVar

from .. import errors
from ..broker import base, codec
from ..broker.dispatching import Dispatch
from ..broker.repairs import RepairPlan, StepChange
from ..broker.schedules import ScheduleInfo, ScheduleSpec
from ..workflow.schema import WorkflowSchema

T = TypeVar("T")

#: Every record that crosses the wire, by name (the server's OpenAPI names them too).
RECORDS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        base.StepAssignment,
        base.StepReport,
        base.StepInfo,
        base.StepExplanation,
        base.InstanceInfo,
        base.WorkerInfo,
        base.Lease,
        base.InstanceEvent,
        ScheduleInfo,
        ScheduleSpec,
        RepairPlan,
        StepChange,
    )
}


def encode(value: Any) -> Any:
    """A record (or a list of them, or a plain value) as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    return value


def decode(cls: type[T], data: Any) -> T:
    """The record of class ``cls`` that :func:`encode` turned into ``data``."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{name: _read(hints[name], data[name]) for name in names if name in data})


def decode_list(cls: type[T], data: Any) -> list[T]:
    return [decode(cls, item) for item in data]


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read(hint: Any, value: Any) -> Any:
    """``value`` read as the type ``hint`` names."""
    if value is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _read(options[0], value) if len(options) == 1 else value
    if origin in (list, tuple):
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_read(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        return value
    if hint is datetime:
        return datetime.fromisoformat(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return decode(hint, value)
    return value


# -- the shapes of requests that carry more than a record ----------------------------------------
def encode_dispatch(dispatch: Dispatch) -> dict[str, Any]:
    return {
        "inputs": dict(dispatch.inputs),
        "delay": dispatch.delay,
        "at": dispatch.at.isoformat() if dispatch.at is not None else None,
        "key": dispatch.key,
        "priority": dispatch.priority,
    }


def decode_dispatch(data: dict[str, Any]) -> Dispatch:
    at = data.get("at")
    return Dispatch(
        inputs=data.get("inputs") or {},
        delay=data.get("delay"),
        at=datetime.fromisoformat(at) if isinstance(at, str) else at,
        key=data.get("key"),
        priority=data.get("priority", 0),
    )


def encode_schema(schema: WorkflowSchema) -> dict[str, Any]:
    return schema.to_dict()


def decode_schema(data: dict[str, Any]) -> WorkflowSchema:
    return WorkflowSchema.from_dict(data)


# -- errors --------------------------------------------------------------------------------------
#: Broker errors by class name: the ones a client may see raised again.
ERRORS: dict[str, type[errors.FuselineError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, errors.FuselineError)
}


def encode_error(exc: errors.FuselineError) -> dict[str, Any]:
    """The error's class, message and the attributes its handlers read (ids, names, sizes)."""
    fields = {
        name: value
        for name, value in vars(exc).items()
        if not name.startswith("_") and isinstance(value, (str, int, float, bool, type(None)))
    }
    return {"type": type(exc).__name__, "message": str(exc), "fields": fields}


def decode_error(data: dict[str, Any]) -> errors.FuselineError:
    """The error :func:`encode_error` described, as its own class (FuselineError if unknown).

    Built without calling the class's ``__init__`` (each takes other arguments), then given
    the message and attributes it had on the server.
    """
    cls = ERRORS.get(str(data.get("type")), errors.FuselineError)
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(data.get("message", "")))
    for name, value in (data.get("fields") or {}).items():
        setattr(exc, name, value)
    return exc


def check_json_text(text: str) -> str:
    """Schedule inputs arrive as the JSON text of an object, as the client stored them."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise errors.ScheduleError("schedule inputs must be the JSON text of an object") from None
    return codec.encode_inputs(value)


def encode_fields(record: Any) -> dict[str, Any]:
    """A record's fields as they are (no conversion): for query strings."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
