"""quota.turn: the check at a new message, every call of the reply counted, Redis away handled.

Every body runs on the sync Turn and the AsyncTurn (``any_turn``, ``make_meter``: the same test,
only the I/O differs), on fakeredis, a real Redis and a real cluster where a backend is used."""

from __future__ import annotations

import pytest

from quota import AsyncMeter, InvalidInput, QuotaExceeded, StorageUnavailable
from quota._spool import MemorySpool
from quota.testing import free_ports


def used_nano(meter, user: str) -> int:
    return meter.check_quota_available(user, "system_deepseek").monthly_used_nano


def models(meter, user: str) -> dict:
    return meter.get_token_stats(user, months=1)["models"]


@pytest.fixture
def dead_url() -> str:
    return f"redis://127.0.0.1:{free_ports(1, start=26000)[0]}/0"  # nothing listens there


def test_turn_counts_every_call_and_the_credit_never_stops_the_reply(any_turn):
    meter = any_turn
    meter.set_monthly_credit("ann", "1")
    with meter.turn("ann", "system_deepseek") as turn:
        assert turn.check.allowed and not turn.degraded
        # chat 0.7 CNY, then the summary 0.3 and the naming 0.2 push past the 1 CNY credit
        chat = turn.record({"id": "chatcmpl-1", "usage": {"prompt_tokens": 300_000, "completion_tokens": 200_000}})
        summary = turn.record(input_tokens=100_000, output_tokens=100_000)
        name = turn.record({"prompt_tokens": 200_000, "completion_tokens": 0})
    assert [r.status for r in (chat, summary, name)] == ["counted"] * 3
    assert chat.request_id == "chatcmpl-1"
    assert summary.request_id.startswith(turn.rules.turn_id) and summary.request_id != name.request_id
    assert name.result.exceeded and name.result.monthly_used_nano == 1_200_000_000
    assert models(meter, "ann")["system_deepseek"]["calls"] == 3
    with pytest.raises(QuotaExceeded) as refused:
        with meter.turn("ann", "system_deepseek"):
            pytest.fail("the turn must not start over the credit")
    event = refused.value.event
    assert event["type"] == "quota_exceeded" and event["monthly_used"] == 1.2 and event["monthly_credit"] == 1.0
    assert event["resets_at"] == "2026-02-01T00:00:00Z"
    with meter.turn("ann", "custom_mine") as turn:  # custom models are never limited
        assert turn.record(input_tokens=5, output_tokens=6).status == "counted"
    assert used_nano(meter, "ann") == 1_200_000_000


def test_a_retried_call_is_counted_once(any_turn):
    meter = any_turn
    response = {"id": "chatcmpl-retry", "usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}
    with meter.turn("bob", "system_deepseek") as turn:
        first = turn.record(response)
    with meter.turn("bob", "system_deepseek") as turn:  # the worker retried the whole job
        again = turn.record(response)
    assert (first.status, again.status) == ("counted", "duplicate")
    assert used_nano(meter, "bob") == 3_000_000
    assert meter.turn_options.metrics.records_duplicate == 1


def test_zero_usage_is_a_call(any_turn):
    meter = any_turn
    with meter.turn("zed", "system_deepseek") as turn:
        turn.record({"id": "c0", "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    stats = models(meter, "zed")["system_deepseek"]
    assert (stats["calls"], stats["input_tokens"], stats["output_tokens"]) == (1, 0, 0)


def test_a_provider_id_reused_for_another_call_is_counted_under_a_derived_id(any_turn):
    meter = any_turn
    with meter.turn("cat", "system_deepseek") as turn:
        a = turn.record({"id": "same", "usage": {"prompt_tokens": 10, "completion_tokens": 10}})
        b = turn.record({"id": "same", "usage": {"prompt_tokens": 20, "completion_tokens": 20}})
    assert a.request_id == "same" and b.status == "counted" and b.request_id.startswith("same.c")
    stats = models(meter, "cat")["system_deepseek"]
    assert (stats["calls"], stats["input_tokens"]) == (2, 30)
    assert meter.turn_options.metrics.records_rekeyed == 1


def test_bad_input_raises_and_changes_nothing(any_turn):
    meter = any_turn
    with meter.turn("dan", "system_deepseek") as turn:
        for call in (
            lambda: turn.record("oops"),
            lambda: turn.record(input_tokens=-1, output_tokens=1),
            lambda: turn.record(input_tokens=1, output_tokens=1, model_id="system_typo"),
            lambda: turn.record({"prompt_tokens": 1, "completion_tokens": 1}, input_tokens=1),
            lambda: turn.record(input_tokens=1, output_tokens=1, request_id="bad id"),
        ):
            with pytest.raises(InvalidInput):
                call()
    assert models(meter, "dan") == {}
    with pytest.raises(InvalidInput):
        meter.turn("dan", "system_typo")
    with pytest.raises(InvalidInput):
        meter.turn("bad user!", "system_deepseek")
    with pytest.raises(InvalidInput):
        meter.turn("dan", "system_deepseek", on_unavailable="maybe")


# --- streams -------------------------------------------------------------------------------------


class Source:
    """A provider's stream: OpenAI-style chunks, the last one with the usage when ``usage`` is
    given; ``fail_after`` chunks, it breaks like a dropped connection."""

    def __init__(self, pieces: list[str], usage: tuple[int, int] | None = None, fail_after: int | None = None):
        self.pieces, self.usage, self.fail_after = pieces, usage, fail_after
        self.closed = False

    def __iter__(self):
        for n, piece in enumerate(self.pieces):
            if n == self.fail_after:
                raise ConnectionResetError("the provider went away")
            yield {"id": "chatcmpl-s", "choices": [{"delta": {"content": piece}}]}
        if self.usage is not None:
            yield {
                "id": "chatcmpl-s",
                "choices": [],
                "usage": {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]},
            }

    def close(self) -> None:
        self.closed = True


def test_a_stream_is_counted_once_when_it_ends(any_turn):
    with any_turn.turn("sam", "system_deepseek") as turn:
        source = Source(["hello ", "there"], usage=(300, 20))
        metered = turn.stream(source, prompt=[{"role": "user", "content": "hi"}])
        chunks = list(metered)
        assert len(chunks) == 3 and metered.recorded is not None  # counted as soon as it ended
        assert list(metered) == []  # and done: no second count
    assert metered.recorded.usage == (300, 20, "chatcmpl-s", False, 0, 0) and metered.recorded.status == "counted"
    assert [r.status for r in turn.records] == ["counted"] and not source.closed
    stats = models(any_turn, "sam")["system_deepseek"]
    assert (stats["calls"], stats["input_tokens"], stats["output_tokens"], stats["estimated_calls"]) == (1, 300, 20, 0)


def test_a_stream_left_early_is_counted_at_the_turns_end_and_closed(any_turn):
    with any_turn.turn("sue", "system_deepseek") as turn:
        source = Source(["one ", "two ", "three ", "four"], usage=(300, 20))
        for n, _ in enumerate(turn.stream(source, prompt=[{"role": "user", "content": "hi"}])):
            if n == 1:
                break  # the browser went away
        assert turn.records == []
    [rec] = turn.records
    assert rec.status == "counted" and rec.estimated and rec.request_id == "chatcmpl-s"
    assert rec.usage.output_tokens == 2 and source.closed  # "one two " estimated; the response closed
    assert models(any_turn, "sue")["system_deepseek"]["estimated_calls"] == 1


def test_a_broken_stream_is_counted_and_the_error_goes_on(any_turn):
    with any_turn.turn("sid", "system_deepseek") as turn:
        metered = turn.stream(Source(["a", "b", "c"], fail_after=2))
        with pytest.raises(ConnectionResetError):
            for _ in metered:
                pass
        assert metered.recorded is not None and metered.recorded.estimated
        metered.close()  # closing after the count: nothing more
    assert len(turn.records) == 1
    assert models(any_turn, "sid")["system_deepseek"]["calls"] == 1


def test_a_stream_of_an_unknown_model_is_refused_before_it_starts(any_turn):
    with any_turn.turn("sol", "system_deepseek") as turn:
        with pytest.raises(InvalidInput):
            turn.stream(Source(["x"]), model_id="system_typo")
        assert turn.rules.streams == []


# --- Redis away ----------------------------------------------------------------------------------


def test_check_policy_allow_is_the_default_and_is_counted(dead_url, make_meter):
    meter = make_meter(url=dead_url)
    with meter.turn("fay", "system_deepseek") as turn:
        assert turn.degraded and turn.check is None
        rec = turn.record(input_tokens=10, output_tokens=10)
    assert rec.status == "spooled" and rec.spooled and "unavailable" in rec.error
    assert meter.turn_options.spool.pending_count() == 1
    m = meter.turn_options.metrics
    assert (m.checks_unavailable_allowed, m.records_spooled, m.records_counted) == (1, 1, 0)


def test_check_policy_deny_refuses_system_models_only(dead_url, make_meter):
    meter = make_meter(url=dead_url, on_unavailable="deny")
    with pytest.raises(StorageUnavailable):
        with meter.turn("gus", "system_deepseek"):
            pytest.fail("denied")
    with meter.turn("gus", "custom_mine") as turn:  # custom models are never limited
        assert turn.degraded
    allow = meter.turn("gus", "system_deepseek", on_unavailable="allow")  # per-turn override
    with allow:
        pass
    m = meter.turn_options.metrics
    assert (m.checks_unavailable_denied, m.checks_unavailable_custom, m.checks_unavailable_allowed) == (1, 1, 1)


def test_spooled_records_replay_into_the_month_they_were_made(backend, clock, dead_url, make_meter):
    spool = MemorySpool()
    away = make_meter(url=dead_url, spool=spool)
    clock.set(2026, 1, 31, 23, 59, 59)
    with away.turn("hal", "system_deepseek") as turn:
        turn.record({"id": "chatcmpl-jan", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}})
        clock.set(2026, 2, 1, 0, 0, 0)
        turn.record({"id": "chatcmpl-feb", "usage": {"prompt_tokens": 2000, "completion_tokens": 0}})
    assert spool.pending_count() == 2
    clock.set(2026, 2, 3)
    back = make_meter(backend, spool=spool)
    report = back.replay_spool()
    assert (report.sent, report.dead, report.pending) == (2, 0, False)
    stats = back.get_token_stats("hal", months=1)
    assert stats["models"]["system_deepseek"]["input_tokens"] == 2000
    assert stats["history"]["2026-01"]["system_deepseek"]["input"] == 1000
    assert back.replay_spool().sent == 0  # nothing left, nothing twice


def test_a_turns_end_replays_the_spool_when_redis_is_back(backend, dead_url, make_meter):
    spool = MemorySpool()
    away = make_meter(url=dead_url, spool=spool)
    with away.turn("ivo", "system_deepseek") as turn:
        assert turn.record(input_tokens=100, output_tokens=100).spooled
    assert away.turn_options.metrics.replay_failures == 1 and spool.pending_count() == 1  # its own try failed
    back = make_meter(backend, spool=spool)
    with back.turn("ivo", "custom_x") as turn:  # any turn's end replays, when due
        turn.record(input_tokens=1, output_tokens=1)
    assert spool.pending_count() == 0 and back.turn_options.metrics.records_replayed == 1
    assert back.check_quota_available("ivo", "system_deepseek").monthly_used_nano == 300_000


async def test_async_spool_and_replay_after_the_turn(backend, clock, dead_url):
    spool = MemorySpool()
    away = AsyncMeter.from_url(dead_url, clock=clock, spool=spool)
    async with away.turn("ivy", "system_deepseek") as turn:
        rec = await turn.record(input_tokens=100, output_tokens=100)
    assert rec.spooled and spool.pending_count() == 1
    for task in list(away.turn_options._background):  # its own replay attempt fails: Redis is away
        await task
    assert away.turn_options.metrics.replay_failures == 1 and spool.pending_count() == 1
    await away.aclose()
    back = AsyncMeter(backend.async_client(), clock=clock, spool=spool)
    async with back.turn("ivy", "custom_x") as turn:  # a turn's end replays, off the reply's path
        await turn.record(input_tokens=1, output_tokens=1)
    for task in list(back.turn_options._background):
        await task
    assert spool.pending_count() == 0
    assert (await back.check_quota_available("ivy", "system_deepseek")).monthly_used_nano == 300_000
    await back.aclose()
