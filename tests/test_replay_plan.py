"""quota.replay on its own: the steps of a spool replay and what it acknowledges, with no Redis."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from quota import Settings, StorageUnavailable
from quota._core import MeterCore
from quota._replay import ClaimFile, Commit, Finish, ReadBatch, SendRecords, plan_replay
from quota._spool import MemorySpool, SpoolEntry
from quota._turn_rules import TurnOptions

from .test_core_pure import drive as drive_plan

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JAN = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
OK = [1, b"0", b"5000000000", b"", b""]  # record.lua: counted


def entry(n: int, **changes) -> SpoolEntry:
    fields = dict(
        user="u1",
        model_id="system_deepseek",
        input_tokens=n,
        output_tokens=0,
        request_id=f"r-{n}",
        estimated=False,
        at=JAN,
        cost_nano=1000 * n,
        price=None,
    )
    return SpoolEntry(**{**fields, **changes})


def setup(*entries: SpoolEntry, batch: int = 500) -> tuple[MeterCore, TurnOptions]:
    options = TurnOptions(MemorySpool(), replay_batch=batch)
    for e in entries:
        options.spool.append(e)
    return MeterCore(Settings(prefix="q"), clock=lambda: NOW), options


def drive(plan, send):
    """Run the plan: file steps for real (on the memory spool), ``send(calls)`` for Redis."""
    return drive_plan(plan, lambda step: send(step.calls) if isinstance(step, SendRecords) else step.run())


def test_records_are_made_at_their_instant_and_acknowledged_in_one_commit():
    core, options = setup(entry(1), entry(2))
    steps, report = drive(plan_replay(core, options, "here"), lambda calls: [OK] * len(calls))
    assert [type(s) for s in steps] == [ClaimFile, ReadBatch, SendRecords, Commit, ReadBatch, Finish]
    sent = steps[2].calls
    assert [c.keys[0] for c in sent] == ["q:{u1}:2026-01"] * 2  # the month they were made in
    assert [c.keys[1] for c in sent] == ["q:{u1}:req:r-1", "q:{u1}:req:r-2"]
    assert (steps[3].offset, steps[3].sent, steps[3].dead) == (2, 2, [])
    assert (report.sent, report.dead, report.pending, report.error) == (2, 0, False, None)
    assert options.metrics.records_replayed == 2 and not options.spool.has_pending()


def test_a_conflict_is_sent_again_rekeyed_and_a_refusal_is_put_aside():
    core, options = setup(entry(1), entry(2, model_id="system_gone"), entry(3))
    replies = iter([[ResponseError("QUOTA_CONFLICT request_id was already used"), OK], [OK]])
    steps, report = drive(plan_replay(core, options, "here"), lambda calls: next(replies))
    sends = [s for s in steps if isinstance(s, SendRecords)]
    assert [len(s.calls) for s in sends] == [2, 1]  # r-2 is dead before sending
    assert sends[1].calls[0].keys[1].startswith("q:{u1}:req:r-1.c")  # rekeyed, deterministically
    [commit] = [s for s in steps if isinstance(s, Commit)]
    [(dead, why)] = commit.dead
    assert dead.request_id == "r-2" and why.startswith("record r-2 refused: unknown system model 'system_gone'")
    assert (report.sent, report.dead) == (2, 1)
    assert (options.metrics.records_rekeyed, options.metrics.records_dead) == (1, 1)


def test_redis_failing_stops_the_replay_after_the_last_record_that_landed():
    core, options = setup(entry(1), entry(2), entry(3))
    lost = RedisConnectionError("gone")
    steps, report = drive(plan_replay(core, options, "here"), lambda calls: [OK, lost, OK])
    [commit] = [s for s in steps if isinstance(s, Commit)]
    assert (commit.offset, commit.sent) == (1, 1)  # r-3 landed, but after r-2
    assert report.sent == 1 and report.pending and "gone" in report.error
    assert options.metrics.replay_failures == 1 and options.spool.pending_count() == 2
    assert not options.replay_due()  # it waits before trying again


def test_a_batch_that_could_not_be_sent_at_all_acknowledges_nothing():
    core, options = setup(entry(1), entry(2))
    steps, report = drive(plan_replay(core, options, "here"), lambda calls: StorageUnavailable("Redis away"))
    [commit] = [s for s in steps if isinstance(s, Commit)]
    assert (commit.offset, commit.sent) == (None, 0)
    assert (report.sent, report.pending, report.error) == (0, True, "Redis away")


def test_a_plan_closed_mid_way_releases_its_claim():
    core, options = setup(entry(1))
    plan = plan_replay(core, options, "here")
    claim = next(plan).run()
    assert isinstance(plan.send(claim), ReadBatch)
    assert options.spool.claim() is None  # claimed
    plan.close()  # a step failed: the client closes it
    again = options.spool.claim()
    assert again is not None
    again.release()


def test_each_claim_is_replayed_until_nothing_is_left():
    core, options = setup(entry(1), entry(2), entry(3), batch=2)
    steps, report = drive(plan_replay(core, options, "here"), lambda calls: [OK] * len(calls))
    assert [len(s.calls) for s in steps if isinstance(s, SendRecords)] == [2, 1]
    assert (report.sent, report.pending) == (3, False)


def test_the_memory_spool_notice_is_logged_once_per_process(caplog) -> None:
    """A server builds a meter per role (API, notifier...): one notice is enough."""
    TurnOptions()  # the first of the process, or not: either way the notice has been given now
    with caplog.at_level(logging.INFO, logger="quota.turn"):
        TurnOptions()
        TurnOptions(spool=None)
    assert "no spool file configured" not in caplog.text
