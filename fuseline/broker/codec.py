"""JSON in and out of brokers: the only serialisation fuseline uses.

Results and inputs are stored as JSON text produced here. Nothing read back
is ever unpickled or evaluated; NaN and infinities are refused because they
are not JSON and would not survive other readers of the database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInputs, ResultNotSerializable, ResultTooLarge


class _NotJson(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


def _refuse(value: object) -> Any:
    raise _NotJson(value)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_refuse)


def encode_result(step_name: str, value: Any, max_bytes: int) -> str:
    """JSON text of a step result, or ResultNotSerializable / ResultTooLarge."""
    try:
        text = _dumps(value)
    except _NotJson as exc:
        raise ResultNotSerializable(step_name, exc.value) from None
    except ValueError as exc:  # NaN or infinity
        raise ResultNotSerializable(step_name, value, str(exc)) from None
    except RecursionError:
        raise ResultNotSerializable(step_name, value, "nested too deeply or circular") from None
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
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
        return _dumps(checked)
    except _NotJson as exc:
        raise InvalidInputs(
            f"workflow inputs must be JSON values; got a {type(exc.value).__name__}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise InvalidInputs(f"workflow inputs must be JSON values: {exc}") from None


def decode(text: str | None) -> Any:
    """The value of stored JSON text (None stays None)."""
    if text is None:
        return None
    return json.loads(text)
