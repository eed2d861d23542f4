"""JSON in and out of brokers: the only serialisation fuseline uses.

Results and inputs are stored as JSON text produced here. Nothing read back
is ever unpickled or evaluated; NaN and infinities are refused because they
are not JSON and would not survive other readers of the database, and so
are strings PostgreSQL cannot store as UTF-8 (lone surrogates).

A result is checked against the broker's size limit without building much
more than the limit's worth of text: a cheap walk bounds the size of small
values, which then take the C encoder in one go; a value the walk cannot
prove small is written piece by piece (each piece that provably fits by the
C encoder) and refused as soon as the text passes the limit, so a 100 MB
result costs about 1 MiB of memory, not 100 MB or more.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from itertools import islice
from typing import Any, NoReturn

from ..errors import CorruptStoredValue, InvalidInputs, ResultNotSerializable, ResultTooLarge


class _NotJson(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


def _refuse(value: object) -> Any:
    raise _NotJson(value)


_SEPARATORS = (",", ":")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=_SEPARATORS, default=_refuse)


def _utf8_size(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (UnicodeEncodeError for lone surrogates)."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


# -- bounding the size of a result ------------------------------------------------------------
#: Integers strictly between these print in at most 24 characters (like any float).
_SMALL_INT = 10**22
_NUMBER_CHARS = 24


class _Unbounded(Exception):
    """The walk cannot show the value's JSON fits the budget (too big, a subclass, a cycle)."""


def _upper_bound(value: Any, budget: int) -> int:
    """At least the UTF-8 size of ``value``'s JSON text; raises _Unbounded past ``budget``.

    Each character of a string takes at most 6 bytes (``\\u001f``), a number
    at most 24 characters. Only the exact built-in JSON types are bounded:
    anything else (subclasses included) is left to the careful path. Written
    for speed: it runs before every result is encoded.
    """
    kind = type(value)
    if kind is dict:
        total = 2 * len(value) + 2  # braces, colons and commas
        try:
            total += 6 * sum(map(len, value)) + 2 * len(value)  # string keys in quotes
        except TypeError:
            total += sum(_key_bound(key) for key in value)
        items: Any = value.values()
    elif kind is list or kind is tuple:
        total = len(value) + 2
        items = value
    elif kind is str:
        return 6 * len(value) + 2
    else:
        return _scalar_bound(value)
    if 2 * len(value) > budget:  # every item takes 2 bytes or more
        raise _Unbounded
    for item in items:
        kind = type(item)
        if kind is str:
            total += 6 * len(item) + 2
            if total > budget:
                raise _Unbounded
        elif kind is int:
            if not -_SMALL_INT < item < _SMALL_INT:
                raise _Unbounded
            total += _NUMBER_CHARS
        elif kind is float or kind is bool or item is None:
            total += _NUMBER_CHARS
        elif kind is dict or kind is list or kind is tuple:
            total += _upper_bound(item, budget - total)
            if total > budget:
                raise _Unbounded
        else:
            raise _Unbounded
    return total


def _scalar_bound(value: Any) -> int:
    kind = type(value)
    if kind is int:
        if -_SMALL_INT < value < _SMALL_INT:
            return _NUMBER_CHARS
        raise _Unbounded
    if kind is float or kind is bool or value is None:
        return _NUMBER_CHARS
    raise _Unbounded


def _key_bound(key: Any) -> int:
    """A dict key: a string, or a number, boolean or null written as a string (in quotes)."""
    return 6 * len(key) + 2 if type(key) is str else _scalar_bound(key) + 2


#: A large list or dict is encoded this many items at a time (each batch by the C encoder if it fits).
_BATCH = 256
#: A large string is encoded in slices of this many characters.
_STRING_SLICE = 65536


class _Writer:
    """The parts of a JSON text being built, refusing to grow past the limit."""

    __slots__ = ("limit", "parts", "size", "step_name")

    def __init__(self, step_name: str, limit: int) -> None:
        self.step_name = step_name
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    @property
    def room(self) -> int:
        return self.limit - self.size

    def add(self, text: str) -> None:
        self.size += _utf8_size(text)
        if self.size > self.limit:
            self.refuse(0)
        self.parts.append(text)

    def refuse(self, more: int) -> NoReturn:
        raise ResultTooLarge(self.step_name, self.size + more, self.limit, exact=False)


def _fits(value: Any, room: int) -> bool:
    try:
        return _upper_bound(value, room) <= room
    except (_Unbounded, RecursionError):
        return False


def _emit(value: Any, out: _Writer, path: set[int], *, checked: bool = False) -> None:
    """Append ``value``'s JSON text to ``out``, exactly as ``json.dumps`` writes it.

    Whatever provably fits in the room left goes through the C encoder in one
    piece; a larger list or dict is written a batch of items at a time, a
    larger string a slice at a time, so nothing much bigger than the limit
    is ever built. ``path`` holds the containers being written (cycles).
    """
    if not checked and _fits(value, out.room):
        out.add(_dumps(value))
    elif isinstance(value, str):
        if len(value) + 2 > out.room:  # every character takes a byte at least
            out.refuse(len(value) + 2)
        out.add('"')
        for start in range(0, len(value), _STRING_SLICE):
            out.add(_dumps(value[start : start + _STRING_SLICE])[1:-1])
        out.add('"')
    elif isinstance(value, (list, tuple, dict)):
        if id(value) in path:
            raise ValueError("Circular reference detected")
        path.add(id(value))
        if isinstance(value, dict):
            _emit_dict(value, out, path)
        else:
            _emit_list(value, out, path)
        path.discard(id(value))
    else:  # a number, true, false, null, or something JSON cannot hold
        out.add(_dumps(value))


def _emit_list(value: list[Any] | tuple[Any, ...], out: _Writer, path: set[int]) -> None:
    # The caller found the whole list too big for the C encoder: a batch that
    # is the whole list, or a lone item, is not walked again to find that out.
    out.add("[")
    for start in range(0, len(value), _BATCH):
        batch = value[start : start + _BATCH]
        if start:
            out.add(",")
        if len(batch) < len(value) and _fits(batch, out.room):
            out.add(_dumps(batch)[1:-1])
            continue
        for n, item in enumerate(batch):
            if n:
                out.add(",")
            _emit(item, out, path, checked=len(value) == 1)
    out.add("]")


def _emit_dict(value: dict[Any, Any], out: _Writer, path: set[int]) -> None:
    out.add("{")
    items = iter(value.items())
    first = True
    while batch := dict(islice(items, _BATCH)):
        if not first:
            out.add(",")
        first = False
        if len(batch) < len(value) and _fits(batch, out.room):
            out.add(_dumps(batch)[1:-1])
            continue
        for n, (key, item) in enumerate(batch.items()):
            # json writes keys that are numbers, booleans or null as strings
            out.add(("," if n else "") + _dumps({key: 0})[1:-2])
            _emit(item, out, path, checked=len(value) == 1)
    out.add("}")


class RefusedResult:
    """A result its sender already found it could not store: a worker behind ``fuseline server``
    encodes its result before sending it, and sends the refusal instead of the value. The broker
    fails the step with the sender's reason, exactly as if it had found it itself."""

    def __init__(self, error: ResultNotSerializable | ResultTooLarge) -> None:
        self.error = error


def encode_result(step_name: str, value: Any, max_bytes: int) -> str:
    """JSON text of a step result, or ResultNotSerializable / ResultTooLarge."""
    if isinstance(value, RefusedResult):
        raise value.error
    try:
        if _fits(value, max_bytes):  # the common case: small, and the C encoder at full speed
            text = _dumps(value)
            size = _utf8_size(text)
        else:
            out = _Writer(step_name, max_bytes)
            _emit(value, out, set(), checked=True)
            text = "".join(out.parts)
            size = out.size
    except _NotJson as exc:
        raise ResultNotSerializable(step_name, exc.value) from None
    except UnicodeEncodeError:
        raise ResultNotSerializable(
            step_name, value, "it contains a lone surrogate, which is not valid UTF-8"
        ) from None
    except (ValueError, TypeError) as exc:  # NaN or infinity, a huge int, a key JSON cannot hold
        raise ResultNotSerializable(step_name, value, str(exc)) from None
    except RecursionError:
        raise ResultNotSerializable(step_name, value, "nested too deeply or circular") from None
    if size > max_bytes:
        raise ResultTooLarge(step_name, size, max_bytes)
    return text


def check_inputs(inputs: Any) -> dict[str, Any]:
    """Workflow inputs as a dict, refusing anything but a mapping with string keys."""
    if not isinstance(inputs, Mapping):
        raise InvalidInputs(f"workflow inputs must be a JSON object (a dict), got {type(inputs).__name__}")
    for key in inputs:
        if not isinstance(key, str):
            raise InvalidInputs(f"workflow input names must be strings, got {key!r}")
    return dict(inputs)


def encode_inputs(inputs: Any) -> str:
    """JSON text of workflow inputs, which must be an object with string keys."""
    checked = check_inputs(inputs)
    try:
        text = _dumps(checked)
        _utf8_size(text)
    except _NotJson as exc:
        raise InvalidInputs(
            f"workflow inputs must be JSON values; got a {type(exc.value).__name__}"
        ) from None
    except UnicodeEncodeError:
        raise InvalidInputs("workflow inputs contain a lone surrogate, which is not valid UTF-8") from None
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidInputs(f"workflow inputs must be JSON values: {exc}") from None
    return text


def decode(text: str | None) -> Any:
    """The value of stored JSON text (None stays None).

    Text that is not JSON was not written by fuseline (a corrupted row, or
    another program's data, such as a pickle): it is refused, never run.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError) as exc:
        raise CorruptStoredValue(str(exc)) from None
