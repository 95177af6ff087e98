"""Turn holds (issue 9): admission reserves part of the credit, records draw it down, the turn's end
gives the rest back, and a hold whose worker died expires. The credit then holds under bursts.

The bodies run on the sync Turn and the AsyncTurn (``any_turn``, ``make_meter``); the bursts are
a threaded worker (sync) and an event loop (async), as they happen."""

from __future__ import annotations

import asyncio
import threading
import time
from decimal import Decimal

import pytest

from quota import AsyncMeter, Meter, QuotaExceeded

CALL = {"input_tokens": 20_000, "output_tokens": 4_000}  # 0.028 CNY on system_deepseek
CALL_NANO = 28_000_000
TURN_CALLS = 5
TURN_NANO = TURN_CALLS * CALL_NANO  # 0.14 CNY


def holds(raw, user: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.hgetall(f"quota:{{{user}}}:holds").items()}


def spend(meter, user: str, nano: int) -> None:
    """Spend exactly ``nano`` on system_deepseek (1 nano-CNY per input token)."""
    meter.update_token_usage(user, "system_deepseek", nano // 1000, 0)


def test_a_hold_is_taken_drawn_down_and_given_back(any_turn, raw):
    meter = any_turn
    with meter.turn("ann", "system_deepseek", hold="0.1") as turn:
        assert turn.hold == Decimal("0.1")
        [(field, value)] = holds(raw, "ann").items()
        assert field == turn.rules.turn_id and value.startswith("100000000:")
        assert 0 < raw.pttl("quota:{ann}:holds") <= 600_000
        check = meter.check_quota_available("ann", "system_deepseek")
        assert check.allowed and check.held_nano == 100_000_000 and check.available_nano == 4_900_000_000
        stats = meter.get_token_stats("ann")
        assert (stats["held"], stats["available"], stats["remaining"]) == (0.1, 4.9, 5.0)
        first = turn.record(**CALL)
        assert first.result.hold_remaining_nano == 100_000_000 - CALL_NANO
        assert holds(raw, "ann")[turn.rules.turn_id].startswith(f"{100_000_000 - CALL_NANO}:")
        for _ in range(TURN_CALLS - 1):
            last = turn.record(**CALL)
        assert last.result.hold_remaining_nano == 0  # never below 0
        assert turn.record(input_tokens=1, output_tokens=1, model_id="custom_x").status == "counted"
    assert holds(raw, "ann") == {}
    assert meter.turn_options.metrics.holds_taken == meter.turn_options.metrics.holds_released == 1
    stats = meter.get_token_stats("ann")
    assert (stats["held"], stats["monthly_used"], stats["available"]) == (0.0, 0.14, 4.86)


def test_the_last_of_the_credit_is_held_by_one_turn_only(any_turn):
    meter = any_turn
    spend(meter, "bo", 4_990_000_000)
    with meter.turn("bo", "system_deepseek") as first:
        assert first.hold == Decimal("0.01")  # min(hold, what is left)
        with pytest.raises(QuotaExceeded) as refused:
            with meter.turn("bo", "system_deepseek"):
                pytest.fail("the rest of the credit is held by the first turn")
        event = refused.value.event
        assert event["held"] == 0.01 and event["monthly_used"] == 4.99 and event["code"] == "credit_held"
        assert "reserved by replies in progress" in event["message"]
        assert not meter.check_quota_available("bo", "system_deepseek").allowed
        for _ in range(TURN_CALLS):
            assert first.record(**CALL).status == "counted"  # the reply always finishes, past the credit
    assert meter.check_quota_available("bo", "system_deepseek").monthly_used_nano == 4_990_000_000 + TURN_NANO


def test_n_turns_start_together_while_the_credit_covers_n_holds(any_turn):
    meter = any_turn
    meter.set_monthly_credit("cy", "1")
    turns = [meter.turn("cy", "system_deepseek", hold="0.1") for _ in range(10)]
    for turn in turns:
        turn.__enter__()
    with pytest.raises(QuotaExceeded):
        meter.turn("cy", "system_deepseek", hold="0.1").__enter__()
    for turn in turns:
        turn.__exit__(None, None, None)
    with meter.turn("cy", "system_deepseek", hold="0.1") as again:  # all given back
        assert again.hold == Decimal("0.1")


def test_sequential_turns_well_under_the_credit_are_never_refused(any_turn):
    meter = any_turn
    for _ in range(30):  # 30 x 0.14 = 4.2 of 5 CNY
        with meter.turn("di", "system_deepseek") as turn:
            for _ in range(TURN_CALLS):
                turn.record(**CALL)
    assert meter.check_quota_available("di", "system_deepseek").monthly_used_nano == 30 * TURN_NANO


def test_a_turn_that_raises_gives_its_hold_back(any_turn, raw):
    meter = any_turn
    with pytest.raises(RuntimeError):
        with meter.turn("ed", "system_deepseek", hold="2"):
            assert meter.check_quota_available("ed", "system_deepseek").held_nano == 2_000_000_000
            raise RuntimeError("the provider failed")
    assert holds(raw, "ed") == {}
    assert meter.check_quota_available("ed", "system_deepseek").held_nano == 0


@pytest.mark.parametrize("side", ["sync"])  # the expiry is the scripts' (2.2 s of waiting): one client is enough
def test_a_dead_workers_hold_expires_and_the_user_is_admitted_again(backend, make_meter, raw):
    meter = make_meter(backend, monthly_credit=1, hold_ttl_s=1)
    crashed = meter.turn("fa", "system_deepseek", hold="1")
    crashed.__enter__()  # the worker dies: no __exit__
    with pytest.raises(QuotaExceeded):
        meter.turn("fa", "system_deepseek").__enter__()
    time.sleep(1.1)
    assert meter.check_quota_available("fa", "system_deepseek").held_nano == 0
    with meter.turn("fa", "system_deepseek", hold="0.5") as turn:
        assert list(holds(raw, "fa")) == [turn.rules.turn_id]  # the dead hold was deleted
    time.sleep(1.1)
    assert not raw.exists("quota:{fa}:holds")  # and the hash goes with its holds


def test_a_live_turn_keeps_its_hold_while_it_records(backend, make_meter):
    meter = make_meter(backend, monthly_credit=1, hold_ttl_s=1)
    with meter.turn("gu", "system_deepseek", hold="0.5") as turn:
        for _ in range(4):  # 1.6 s in all, each step inside 1 s
            time.sleep(0.4)
            turn.record(input_tokens=1000, output_tokens=0)
        assert meter.check_quota_available("gu", "system_deepseek").held_nano == 500_000_000 - 4 * 1_000_000


def test_can_continue_is_true_while_the_hold_or_the_credit_lasts(any_turn):
    meter = any_turn
    meter.set_monthly_credit("hu", "0.1")
    with meter.turn("hu", "system_deepseek", hold="0.05") as turn:
        assert turn.can_continue()  # the hold has money left
        turn.record(**CALL)
        turn.record(**CALL)  # 0.056 > 0.05: the hold is spent
        assert turn.rules.hold_remaining_nano == 0
        assert turn.can_continue()  # but the credit is not used up
        turn.record(**CALL)
        turn.record(**CALL)  # 0.112 > 0.1
        assert not turn.can_continue()
    with meter.turn("hu", "custom_x") as custom:
        assert custom.can_continue()


def test_the_auto_hold_learns_the_users_turns(any_turn, clock):
    meter = any_turn
    sizes = []
    for calls in (1, 1, 10, 10, 1):
        with meter.turn("iv", "system_deepseek") as turn:
            sizes.append(turn.rules.hold_nano)
            for _ in range(calls):
                turn.record(**CALL)
    # default 0.1; then 0.028 (one call) pulls it down slowly, ten calls (0.28) push it up fast
    assert sizes[0] == 100_000_000
    assert sizes[1] == 100_000_000 - (100_000_000 - CALL_NANO) // 8
    assert sizes[2] == sizes[1] - (sizes[1] - CALL_NANO) // 8  # falls slowly
    assert sizes[3] == sizes[2] + (10 * CALL_NANO - sizes[2]) // 2  # rises fast: halfway at once
    assert sizes[4] > sizes[3]
    with meter.turn("iv", "system_deepseek") as turn:
        assert 10_000_000 <= turn.rules.hold_nano <= 1_000_000_000  # within floor and cap


def test_a_user_at_the_credit_gets_no_hold_and_custom_turns_take_none(any_turn, raw):
    meter = any_turn
    spend(meter, "jo", 5_000_000_000)
    with pytest.raises(QuotaExceeded):
        with meter.turn("jo", "system_deepseek"):
            pass
    with meter.turn("jo", "custom_x") as turn:
        assert turn.hold == 0
        turn.record(input_tokens=10, output_tokens=10)
    assert holds(raw, "jo") == {}


def test_a_retried_turn_begin_keeps_one_hold_and_a_retried_turn_end_changes_nothing(meter, raw):
    """redis-py resends a script whose reply was lost (docs: 10 retries by default), so turn_begin
    and turn_end can run twice for one turn: the turn must still hold once and be released once."""
    meter.set_monthly_credit("pa", "1")
    model = meter.prices.lookup("system_deepseek")
    begin = meter.core.turn_begin("pa", model, "turn-retried", meter.core.hold_arg("1"))
    (first, first_hold), (again, again_hold) = meter.run(begin), meter.run(begin)
    assert first.allowed and again.allowed  # the retry is admitted, its own hold aside
    assert first_hold == again_hold == 1_000_000_000 and again.held_nano == 0
    assert list(holds(raw, "pa")) == ["turn-retried"]
    assert meter.check_quota_available("pa", "system_deepseek").held_nano == 1_000_000_000
    with pytest.raises(QuotaExceeded):  # the one hold has the whole credit
        meter.turn("pa", "system_deepseek").__enter__()
    meter.run(meter.core.record("pa", "system_deepseek", 20_000, 4_000, turn_id="turn-retried"))
    _, late_hold = meter.run(begin)  # a late retry does not refill the hold
    assert late_hold == 1_000_000_000 - CALL_NANO
    assert meter.check_quota_available("pa", "system_deepseek").held_nano == 1_000_000_000 - CALL_NANO
    end = meter.core.turn_end("pa", model, "turn-retried", CALL_NANO)
    assert meter.run(end) is True
    month_after_end = raw.hgetall("quota:{pa}:2026-01")
    learned = 100_000_000 - (100_000_000 - CALL_NANO) // 8  # the default 0.1 falls towards 0.028
    assert month_after_end[b"system_deepseek:hold_est_nano"] == str(learned).encode()
    assert meter.run(end) is False  # the retry releases and learns nothing
    assert raw.hgetall("quota:{pa}:2026-01") == month_after_end
    assert holds(raw, "pa") == {} and meter.check_quota_available("pa", "system_deepseek").held_nano == 0


def test_a_retried_turn_begin_whose_hold_died_meanwhile_is_a_new_admission(meter, raw):
    """A retry that finds its own hold dead must not answer "admitted, holding X" while it deletes
    that hold: the turn would run unreserved while other turns are admitted against the same credit."""
    model = meter.prices.lookup("system_deepseek")
    begin = meter.core.turn_begin("qi", model, "turn-stalled", meter.core.hold_arg("1"))
    meter.run(begin)
    raw.hset("quota:{qi}:holds", "turn-stalled", "1000000000:1")  # its expiry passed (server clock)
    assert meter.check_quota_available("qi", "system_deepseek").held_nano == 0
    check, hold = meter.run(begin)
    assert check.allowed and hold == 1_000_000_000
    remaining, expires_ms = holds(raw, "qi")["turn-stalled"].split(":")
    now_s, now_us = raw.time()
    assert remaining == "1000000000" and int(expires_ms) > now_s * 1000 + now_us // 1000
    assert meter.check_quota_available("qi", "system_deepseek").held_nano == 1_000_000_000
    # ... and when the credit went to other turns meanwhile, the retry is refused like a new turn
    meter.set_monthly_credit("qi", "1")
    raw.hset("quota:{qi}:holds", "turn-stalled", "1000000000:1")
    with meter.turn("qi", "system_deepseek", hold="1"):
        check, hold = meter.run(begin)
        assert not check.allowed and hold == 0
        assert meter.check_quota_available("qi", "system_deepseek").held_nano == 1_000_000_000


def test_thirty_two_threads_at_the_last_of_the_credit(real_backend, clock):
    """A threaded worker: 32 turns start at once at 4.99 of 5 CNY; only one turn's worth gets past."""
    meter = Meter(real_backend.sync_client(), clock=clock, monthly_credit=5)
    spend(meter, "ka", 4_990_000_000)
    admitted, start = [], threading.Barrier(32)

    def worker() -> None:
        start.wait()
        try:
            with meter.turn("ka", "system_deepseek") as turn:
                admitted.append([turn.record(**CALL).status for _ in range(TURN_CALLS)])
        except QuotaExceeded:
            pass

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = meter.check_quota_available("ka", "system_deepseek").monthly_used_nano
    assert admitted == [["counted"] * TURN_CALLS]  # one turn, recorded in full
    assert used == 4_990_000_000 + TURN_NANO <= 5_000_000_000 + TURN_NANO
    meter.close()


async def test_a_hundred_async_turns_at_the_last_of_the_credit(real_backend, clock):
    """The issue's burst: 100 concurrent turns at credit minus a little. Before holds, all were
    admitted (the month ended at 2.4x the credit with 50); now one turn's cost at most gets past."""
    meter = AsyncMeter(real_backend.async_client(), clock=clock, monthly_credit=5)
    await meter.update_token_usage("lu", "system_deepseek", 4_990_000, 0)
    go = asyncio.Event()

    async def one_turn() -> int:
        await go.wait()
        try:
            async with meter.turn("lu", "system_deepseek") as turn:
                for _ in range(TURN_CALLS):
                    assert (await turn.record(**CALL)).status == "counted"
                return 1
        except QuotaExceeded:
            return 0

    tasks = [asyncio.ensure_future(one_turn()) for _ in range(100)]
    await asyncio.sleep(0)
    go.set()
    admitted = sum(await asyncio.gather(*tasks))
    check = await meter.check_quota_available("lu", "system_deepseek")
    assert admitted == 1
    assert check.monthly_used_nano == 4_990_000_000 + TURN_NANO and check.held_nano == 0
    await meter.aclose()


async def test_parallel_async_turns_well_under_the_credit_are_all_admitted(real_backend, clock):
    meter = AsyncMeter(real_backend.async_client(), clock=clock, monthly_credit=5)

    async def one_turn() -> None:
        async with meter.turn("mo", "system_deepseek") as turn:  # auto: 0.1 each, 40 fit in 5
            await asyncio.sleep(0.05)
            for _ in range(TURN_CALLS):
                await turn.record(**CALL)

    await asyncio.gather(*(one_turn() for _ in range(30)))
    check = await meter.check_quota_available("mo", "system_deepseek")
    assert check.monthly_used_nano == 30 * TURN_NANO and check.held_nano == 0
    await meter.aclose()


async def test_a_cancelled_async_turn_gives_its_hold_back(real_backend, clock):
    meter = AsyncMeter(real_backend.async_client(), clock=clock, monthly_credit=5)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with meter.turn("ny", "system_deepseek", hold="1"):
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(stuck())
    await entered.wait()
    assert (await meter.check_quota_available("ny", "system_deepseek")).held_nano == 1_000_000_000
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await meter.check_quota_available("ny", "system_deepseek")).held_nano == 0
    await meter.aclose()


async def test_a_turn_cancelled_while_it_is_being_admitted_gives_its_hold_back(real_backend, clock):
    """The admission runs shielded and completes after its task is cancelled; the turn never sees
    its hold, so the hold is given back in the background at once (not after hold_ttl_s), and the
    "auto" estimate learns nothing from a turn that never ran."""
    meter = AsyncMeter(real_backend.async_client(), clock=clock, monthly_credit=5)
    run = meter.run

    async def slow_admission(call):
        if call.script.name == "turn_begin":
            await asyncio.sleep(0.2)  # the worker is cancelled while this is on its way
        return await run(call)

    meter.run = slow_admission
    entering = asyncio.ensure_future(meter.turn("oz", "system_deepseek", hold="1").__aenter__())
    await asyncio.sleep(0.05)
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    await asyncio.sleep(0.3)  # the admission lands, then the release
    await meter.turn_options.wait_background()
    check = await meter.check_quota_available("oz", "system_deepseek")
    assert check.held_nano == 0 and check.allowed
    raw = real_backend.sync_client()
    assert raw.hlen("quota:{oz}:holds") == 0
    assert not raw.hexists("quota:{oz}:2026-01", "system_deepseek:hold_est_nano")
    raw.close()
    await meter.aclose()


async def test_an_async_cluster_meter_used_first_by_many_tasks_at_once(redis_cluster, clock):
    """redis-py's asyncio cluster client breaks when 30 tasks make its first calls together
    (each initializes it and closes connections the others use); AsyncMeter initializes it once."""
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    host, port = redis_cluster.startup
    redis_cluster.flushall()
    meter = AsyncMeter(AsyncRedisCluster(host=host, port=port), clock=clock)
    results = await asyncio.gather(*(meter.update_token_usage(f"u{i}", "system_deepseek", 1000, 0) for i in range(30)))
    assert [r.duplicate for r in results] == [False] * 30
    await meter.aclose()
