"""Item 14, bad results: each fails only its step, the worker lives on, and a huge one costs no memory.

The contract suite already checks the broker API (a set, an object, NaN and a
nested infinity fail the step naming step and type; exactly
``max_result_bytes`` is accepted and one byte more refused). Here the same
happens in a real worker process (``fuseline worker run``), with the values
that used to escape as a TypeError or UnicodeEncodeError and kill the worker,
and a 100 MB result is refused without building 100 MB of JSON.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuseline import Status
from fuseline.broker import codec
from fuseline.broker.base import DEFAULT_MAX_RESULT_BYTES
from fuseline.broker.sql import SqlBroker
from fuseline.errors import ResultNotSerializable, ResultTooLarge
from tests.reliability import flows
from tests.reliability.support import FLOWS, REPOSITORY, fuseline, in_parallel, ok, subprocess_env

MIB = 1024 * 1024
assert DEFAULT_MAX_RESULT_BYTES == MIB


def test_each_bad_result_fails_only_its_step_and_the_worker_runs_the_next_instance(db_url: str) -> None:
    broker = SqlBroker(db_url)
    try:
        schema = flows.bad_results.to_schema()
        kinds = [*flows.BAD_VALUES, "ok"]  # the good instance is claimed last
        ids = dict(zip(kinds, broker.dispatch_many(schema, [{"kind": k} for k in kinds]), strict=True))

        worker = ok(fuseline("worker", "run", f"{FLOWS}:bad_results", "--burst", url=db_url))

        workers = set()
        for kind, (_value, type_name) in flows.BAD_VALUES.items():
            info = broker.get_instance(ids[kind])
            produce, bystander = info.step("produce"), info.step("bystander")
            assert produce.state is Status.FAILED, (kind, produce)
            assert produce.attempt == 1, "the step was run again: its worker died"
            assert "'produce'" in produce.error and f"'{type_name}'" in produce.error, (kind, produce.error)
            assert "JSON" in produce.error
            assert produce.result is None
            assert bystander.state is Status.SUCCEEDED and bystander.result == f"unaffected by {kind}"
            assert info.status is Status.FAILED
            workers |= {produce.worker_id, bystander.worker_id}
        good = broker.get_instance(ids["ok"])
        assert good.status is Status.SUCCEEDED
        assert good.result == [{"fine": True}, "unaffected by ok"]
        workers |= {s.worker_id for s in good.steps}
        assert len(workers) == 1, "one worker process should have run every step"
        assert "stopped after 16 steps" in worker.stderr, worker.stderr
    finally:
        broker.close()


def test_a_100_mb_result_in_a_worker_grows_its_peak_rss_by_less_than_twice_the_limit(
    db_url: str, tmp_path: Path
) -> None:
    broker = SqlBroker(db_url)
    try:
        schema = flows.measured.to_schema()
        big, probe = broker.dispatch_many(
            schema, [{"mode": "build", "folder": str(tmp_path)}, {"mode": "probe", "folder": str(tmp_path)}]
        )

        ok(fuseline("worker", "run", f"{FLOWS}:measured", "--burst", url=db_url))

        step = broker.get_instance(big).step("measure")
        assert step.state is Status.FAILED
        assert f"more than the limit of {MIB} bytes" in step.error, step.error
        assert broker.get_instance(probe).status is Status.SUCCEEDED
    finally:
        broker.close()
    built = int((tmp_path / "after-build").read_text())
    reported = int((tmp_path / "after-report").read_text())
    assert built > 100 * MIB, "the step did not build its 100 MB value"
    assert reported - built < 2 * MIB, f"reporting grew the peak RSS by {(reported - built) / MIB:.1f} MiB"


#: Builds a value in a fresh process, then encodes it: prints the peak RSS before and after.
MEASURE_ENCODING = """
import sys
from fuseline.broker.codec import encode_result
from fuseline.errors import ResultTooLarge
from tests.reliability.support import peak_rss_bytes

kind = sys.argv[1]
if kind == "one-string":
    value = "s" * 100_000_000
elif kind == "1-kb-strings":
    value = {"rows": [f"{n:07d}" + "k" * 993 for n in range(100_000)]}
elif kind == "ints":
    value = list(range(3_000_000))  # 23 MB of JSON
elif kind == "shared":  # a billion-node tree held in 24 KB: [[[1.5e-300] * 1000] * 1000] * 1000
    value = [[[1.5e-300] * 1000] * 1000] * 1000
before = peak_rss_bytes()
try:
    encode_result("big", value, 1024 * 1024)
except ResultTooLarge as exc:
    print(before, peak_rss_bytes(), exc)
"""

#: (100 strings of 1 MB: the worker test above)
HUGE_VALUES = ["one-string", "1-kb-strings", "ints", "shared"]


def test_encoding_a_huge_result_never_builds_its_json() -> None:
    def measure(kind: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", MEASURE_ENCODING, kind],
            cwd=REPOSITORY,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    for kind, done in zip(
        HUGE_VALUES, in_parallel([lambda k=k: measure(k) for k in HUGE_VALUES], 2), strict=True
    ):
        assert done.returncode == 0 and done.stdout, (kind, done.stdout, done.stderr)
        before, after, message = done.stdout.split(" ", 2)
        assert "more than the limit of 1048576 bytes" in message and "'big'" in message
        growth = int(after) - int(before)
        assert growth < 2 * MIB, f"{kind}: encoding grew the peak RSS by {growth / MIB:.1f} MiB"


# -- the encoder itself --------------------------------------------------------------------------


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.4:
        scalars = [
            0,
            -7,
            2**70,
            10**21,
            0.1,
            -1.5e-300,
            True,
            False,
            None,
            "",
            "x",
            'q"\\\n\x01\x7f é 🚀 \u2028',
        ]
        return rng.choice([*scalars, "a" * rng.randint(0, 400)])
    if roll < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3, 300]) if depth < 2 else 2)]
    if roll < 0.8:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4)))
    keys = ["k", "é🚀", "'; DROP TABLE x; --", 1, -2.5, True, None, "long" * 40]
    return {
        rng.choice(keys): _random_value(rng, depth + 1)
        for _ in range(rng.choice([1, 3, 300]) if depth < 2 else 2)
    }


def test_results_encoded_piece_by_piece_are_exactly_what_json_dumps_writes() -> None:
    """Limits below and above each value's size drive both the C path and the piecewise one."""
    rng = random.Random(14)
    checked = 0
    for _ in range(50):
        value = _random_value(rng)
        expected = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size = len(expected.encode())
        for limit in (size, size - 1, size // 3, 50 * size + 10):
            if limit >= size:
                assert codec.encode_result("s", value, limit) == expected
                checked += 1
            else:
                with pytest.raises(ResultTooLarge):
                    codec.encode_result("s", value, limit)
    assert checked >= 90


@pytest.mark.parametrize("extra", [0, 1], ids=["exactly-the-limit", "one-byte-more"])
def test_the_limit_is_exact_for_large_containers_too(extra: int) -> None:
    # 40,000 short strings: the cheap bound (6 bytes a character) is over the limit, so this
    # goes piece by piece; the JSON text itself is exactly the limit (or one byte more).
    value = [f"{n:05d}" for n in range(40_000)]
    size = len(json.dumps(value, separators=(",", ":")))
    value[-1] = "z" * (5 + MIB - size + extra)
    text = json.dumps(value, separators=(",", ":"))
    assert len(text) == MIB + extra
    assert not codec._fits(value, MIB)  # the piecewise path is what runs here
    if extra:
        with pytest.raises(ResultTooLarge, match=f"at least {MIB + 1} bytes"):
            codec.encode_result("s", value, MIB)
    else:
        assert codec.encode_result("s", value, MIB) == text


SMALL_RESULTS = [
    42,
    "done",
    None,
    {"id": 12345, "name": "order-42", "total": 99.95, "items": [{"sku": "A1", "qty": 2}], "ok": True},
    {"rows": [{"id": i, "name": f"row {i}", "value": i * 1.5} for i in range(1000)]},
]


@pytest.mark.parametrize("value", SMALL_RESULTS, ids=["int", "str", "none", "small-dict", "1000-rows"])
def test_ordinary_results_take_the_c_encoder_in_one_go(value: Any) -> None:
    assert codec._fits(value, MIB)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({(1, 2): "x"}, "keys must be str"),
        ({"text": "\udcff"}, "lone surrogate"),
        ([math.nan], "not JSON compliant"),
        (10**5000, "digits"),
    ],
    ids=["tuple-key", "lone-surrogate", "nested-nan", "huge-int"],
)
def test_values_json_cannot_hold_are_refused_with_a_reason_not_a_crash(value: Any, reason: str) -> None:
    for _path, padded, limit in _both_paths(value):
        with pytest.raises(ResultNotSerializable, match=reason) as refused:
            codec.encode_result("step_x", padded, limit)
        assert "'step_x'" in str(refused.value)


def test_a_circular_result_is_refused_as_circular() -> None:
    loop: list[Any] = []
    loop.append({"again": loop})
    for _path, padded, limit in _both_paths(loop):
        with pytest.raises(ResultNotSerializable, match="Circular reference"):
            codec.encode_result("s", padded, limit)


def _both_paths(value: Any) -> list[tuple[str, Any, int]]:
    """``value`` as is under the default limit (the C encoder), and next to a string whose cheap
    bound (6 bytes a character) is over a limit its real size is well under (piece by piece)."""
    padded = [value, "p" * 200]
    assert not codec._fits(padded, 400)
    return [("c-encoder", value, MIB), ("piecewise", padded, 400)]
