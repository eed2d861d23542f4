"""Schedule tick math with an injected clock: cron in a time zone across DST, intervals, downtime.

The clocks in ``Europe/Oslo`` go forward on 2026-03-29 (02:00 -> 03:00, so
02:30 does not exist) and back on 2026-10-25 (03:00 -> 02:00, so 02:30 comes
twice). A daily 02:30 schedule fires once on each of those days.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from fuseline.broker import MemoryBroker
from fuseline.broker.schedules import ScheduleSpec, tick_key
from fuseline.errors import ScheduleError
from fuseline.workflow import Step, Workflow

UTC = timezone.utc
OSLO = ZoneInfo("Europe/Oslo")
DAILY_0230 = ScheduleSpec.of(cron="30 2 * * *", timezone="Europe/Oslo")
HOURLY = ScheduleSpec.of(cron="30 * * * *", timezone="Europe/Oslo")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def fires(spec: ScheduleSpec, start: datetime, end: datetime, look_every: timedelta) -> list[datetime]:
    """The ticks a worker looking every ``look_every`` from ``start`` to ``end`` would fire."""
    next_fire_at = spec.next_tick(start)
    fired, now = [], start
    while now <= end:
        tick, next_fire_at = spec.due_tick(next_fire_at, now)
        if tick is not None:
            fired.append(tick)
        now += look_every
    return fired


def local_day(tick: datetime) -> str:
    return tick.astimezone(OSLO).date().isoformat()


def test_daily_0230_in_oslo_fires_once_at_0300_on_the_day_clocks_go_forward() -> None:
    fired = fires(DAILY_0230, utc(2026, 3, 27, 12), utc(2026, 3, 30, 12), timedelta(seconds=20))

    assert [local_day(t) for t in fired] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    gap_day = fired[1]
    # 02:30 does not exist that day: it fires at the first minute after the gap, 03:00 CEST
    assert gap_day == utc(2026, 3, 29, 1, 0)
    assert gap_day.astimezone(OSLO).strftime("%H:%M %Z") == "03:00 CEST"
    assert fired[0] == utc(2026, 3, 28, 1, 30) and fired[2] == utc(2026, 3, 30, 0, 30)


def test_daily_0230_in_oslo_fires_once_on_the_day_clocks_go_back() -> None:
    fired = fires(DAILY_0230, utc(2026, 10, 24, 12), utc(2026, 10, 26, 12), timedelta(seconds=20))

    # 02:30 comes twice that day (CEST, then CET): it fires at the first
    assert fired == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert fired[0].astimezone(OSLO).strftime("%H:%M %Z") == "02:30 CEST"


@pytest.mark.parametrize(
    ("day", "hours"),
    [(utc(2026, 3, 28, 23), 23), (utc(2026, 10, 24, 22), 25), (utc(2026, 6, 1, 22), 24)],
    ids=["forward", "back", "summer"],
)
def test_an_hourly_schedule_keeps_its_rhythm_through_dst_changes(day: datetime, hours: int) -> None:
    """Local midnight to midnight: 23 hours on the day clocks go forward, 25 on the day they go back."""
    fired = fires(HOURLY, day, day + timedelta(hours=hours) - timedelta(seconds=1), timedelta(minutes=1))

    assert len(fired) == hours
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fired))


@pytest.mark.parametrize("minute", range(0, 180, 5))
def test_from_anywhere_in_the_repeated_hour_the_next_tick_is_never_in_the_past(minute: int) -> None:
    """cronsim, started inside the second 02:xx hour, can answer the first 02:30: it is skipped."""
    after = utc(2026, 10, 24, 23, 0) + timedelta(minutes=minute)

    tick = DAILY_0230.next_tick(after)

    assert tick > after
    assert tick in (utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30))


def test_the_first_tick_after_a_tick_is_the_next_one() -> None:
    assert DAILY_0230.next_tick(utc(2026, 1, 5, 1, 30)) == utc(2026, 1, 6, 1, 30)
    assert DAILY_0230.next_tick(utc(2026, 1, 5, 1, 29, 59, 999999)) == utc(2026, 1, 5, 1, 30)


def test_intervals_tick_at_multiples_of_their_seconds_since_the_epoch_whenever_asked() -> None:
    every_15 = ScheduleSpec.of(every=15)

    assert every_15.next_tick(utc(2026, 5, 1, 12, 0, 0) + timedelta(microseconds=1)) == utc(
        2026, 5, 1, 12, 0, 15
    )
    assert every_15.next_tick(utc(2026, 5, 1, 12, 0, 15)) == utc(2026, 5, 1, 12, 0, 30)
    assert every_15.next_tick(utc(2026, 5, 1, 12, 0, 29, 999999)) == utc(2026, 5, 1, 12, 0, 30)
    # a clock in another zone names the same instant: the same tick
    oslo_noon = utc(2026, 5, 1, 12, 0, 7).astimezone(OSLO)
    assert every_15.next_tick(oslo_noon) == utc(2026, 5, 1, 12, 0, 15)
    assert ScheduleSpec.of(every=timedelta(hours=1)).every == 3600


def test_a_due_tick_is_fired_once_and_nothing_before_it_is_due() -> None:
    every_10 = ScheduleSpec.of(every=10)
    next_fire_at = utc(2026, 5, 1, 12, 0, 10)

    assert every_10.due_tick(next_fire_at, utc(2026, 5, 1, 12, 0, 9)) == (None, next_fire_at)
    assert every_10.due_tick(next_fire_at, utc(2026, 5, 1, 12, 0, 10)) == (
        next_fire_at,
        utc(2026, 5, 1, 12, 0, 20),
    )


def test_after_downtime_only_the_latest_missed_tick_fires() -> None:
    every_10 = ScheduleSpec.of(every=10)
    tick, following = every_10.due_tick(utc(2026, 5, 1, 12, 0, 10), utc(2026, 5, 1, 14, 3, 27))
    assert (tick, following) == (utc(2026, 5, 1, 14, 3, 20), utc(2026, 5, 1, 14, 3, 30))

    tick, following = DAILY_0230.due_tick(utc(2026, 3, 1, 1, 30), utc(2026, 4, 2, 9, 0))
    assert (tick, following) == (utc(2026, 4, 2, 0, 30), utc(2026, 4, 3, 0, 30))


def test_a_year_of_missed_minutes_is_skipped_at_once() -> None:
    every_minute = ScheduleSpec.of(cron="* * * * *", timezone="Europe/Oslo")
    started = time.perf_counter()

    tick, following = every_minute.due_tick(utc(2025, 5, 1, 0, 0), utc(2026, 5, 1, 12, 0, 30))

    assert (tick, following) == (utc(2026, 5, 1, 12, 0), utc(2026, 5, 1, 12, 1))
    assert time.perf_counter() - started < 1.0  # walked from now, not from a year ago


def test_the_instance_key_is_the_schedule_name_and_the_tick_in_utc() -> None:
    assert tick_key("nightly", utc(2026, 3, 29, 1, 0).astimezone(OSLO)) == "nightly@2026-03-29T01:00:00+00:00"


def test_specs_describe_themselves() -> None:
    assert DAILY_0230.describe() == "cron 30 2 * * * (Europe/Oslo)"
    assert ScheduleSpec.of(every=60).describe() == "every 60s"
    assert ScheduleSpec.of(cron="  0   9 * *  MON ").cron == "0 9 * * MON"  # spaces normalised
    assert ScheduleSpec.of(cron="0 9 * * *").timezone == "UTC"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*': Bad minute"),
        ({"cron": "* * *"}, "invalid cron expression"),
        ({"cron": 5}, "a cron expression is text"),
        ({"cron": "* * * * *", "timezone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
        ({"cron": "* * * * *", "timezone": "Europe"}, "unknown time zone 'Europe'"),
        ({"cron": "* * * * *", "timezone": "../etc/passwd"}, "unknown time zone"),
        ({"every": 0}, "at least 1 second, not 0"),
        ({"every": True}, "whole number of seconds"),
        ({"every": float("nan")}, "whole number of seconds"),
        ({"every": 10**12}, "at most"),
        ({"every": "5"}, "whole number of seconds"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_error(options: dict, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        ScheduleSpec.of(**options)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DAILY_0230.next_tick(datetime(2026, 3, 29, 1, 0))


class Nightly(Step):
    def run_step(self) -> str:
        return "done"


NIGHTLY = Workflow(outputs=[Nightly()], workflow_id="unit-nightly", version="1")


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (utc(2026, 3, 28, 12), ["nightly@2026-03-29T01:00:00+00:00"]),
        (utc(2026, 10, 24, 12), ["nightly@2026-10-25T00:30:00+00:00"]),
    ],
    ids=["forward", "back"],
)
def test_a_broker_on_an_injected_clock_fires_one_instance_on_each_dst_day(
    start: datetime, expected: list[str]
) -> None:
    broker = MemoryBroker()
    clock = [start]
    broker._schedules.clock = lambda: clock[0]
    broker.add_schedule(NIGHTLY, name="nightly", cron="30 2 * * *", timezone="Europe/Oslo")
    worker = broker.register_worker([NIGHTLY.to_schema()])

    while clock[0] < start + timedelta(hours=20):  # a worker claiming every 30 s through the night
        broker.get_step(worker)
        clock[0] += timedelta(seconds=30)

    assert [i.key for i in broker.list_instances()] == expected
