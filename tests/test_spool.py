"""quota.spool: a durable local spool, torn lines, resumed replays, and a real Redis outage."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

import pytest

from quota import Meter
from quota._errors import ConfigError
from quota._spool import Spool, SpoolEntry
from quota.testing import RedisServer, free_ports

AT = datetime(2026, 1, 20, 8, 30, tzinfo=UTC)


def entry(n: int, **changes) -> SpoolEntry:
    fields = dict(
        user="u1",
        model_id="system_deepseek",
        input_tokens=n,
        output_tokens=2 * n,
        request_id=f"r-{n}",
        estimated=False,
        at=AT,
        cost_nano=5000 * n,
        price=None,
    )
    return SpoolEntry(**{**fields, **changes})


def drain(spool: Spool, size: int = 100) -> list[SpoolEntry]:
    claim = spool.claim()
    if claim is None:
        return []
    got = []
    while batch := claim.batch(size):
        got += [e for e, _ in batch]
        claim.ack(batch[-1][1], len(batch))
    claim.finish()
    return got


def test_lines_round_trip_exactly():
    e = entry(
        3,
        price={"cost_per_1k_input": "0.5", "cost_per_1k_output": "1"},
        estimated=True,
        request_id="sha256:" + "a" * 40,
    )
    assert SpoolEntry.from_line(e.to_line()) == e
    line = e.to_line()
    for bad in (line[:-1], line.replace(b'"in":3', b'"in":4'), b"zzzzzzzz " + line[9:]):
        with pytest.raises(ValueError):
            SpoolEntry.from_line(bad)


def test_records_survive_a_restart_in_order(tmp_path):
    path = tmp_path / "w.spool"
    first = Spool(path)
    for n in range(1, 6):
        first.append(entry(n))
    again = Spool(path)  # a new process on the same file
    assert again.has_pending() and again.pending_count() == 5
    assert [e.request_id for e in drain(again)] == [f"r-{n}" for n in range(1, 6)]
    assert not again.has_pending() and not path.with_name("w.spool.replaying").exists()


def test_a_torn_last_line_is_skipped_and_the_next_append_is_safe(tmp_path):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    for n in (1, 2):
        spool.append(entry(n))
    with open(path, "ab") as f:  # the worker died in the middle of a write
        f.write(entry(3).to_line()[:25])
    after = Spool(path)
    after.append(entry(4))
    assert after.pending_count() == 3
    assert [e.request_id for e in drain(after)] == ["r-1", "r-2", "r-4"]
    assert path.with_name("w.spool.bad").read_bytes().startswith(entry(3).to_line()[:25])


def test_a_corrupt_line_in_the_middle_is_put_aside(tmp_path):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    spool.append(entry(1))
    with open(path, "ab") as f:
        f.write(b'deadbeef {"v":1}\n')
    spool.append(entry(2))
    assert [e.request_id for e in drain(spool)] == ["r-1", "r-2"]
    assert b"deadbeef" in path.with_name("w.spool.bad").read_bytes()


def test_a_replay_cut_short_resumes_after_the_last_acknowledged_record(tmp_path):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    for n in range(1, 8):
        spool.append(entry(n))
    claim = spool.claim()
    batch = claim.batch(3)
    claim.ack(batch[-1][1], 3)
    claim.release()  # the worker died before sending the rest
    spool.append(entry(8))  # newer records wait behind the claimed ones
    resumed = Spool(path)
    assert resumed.pending_count() == 5
    assert [e.request_id for e in drain(resumed)] == ["r-4", "r-5", "r-6", "r-7"]
    assert [e.request_id for e in drain(resumed)] == ["r-8"]


def test_one_replayer_at_a_time(tmp_path):
    spool = Spool(tmp_path / "w.spool")
    spool.append(entry(1))
    claim = spool.claim()
    other = Spool(tmp_path / "w.spool")  # another process (flock) or thread
    assert other.claim() is None and spool.claim() is None
    claim.release()
    taken = other.claim()
    assert taken is not None
    taken.release()


def test_an_unwritable_spool_reports_the_record_lost_and_does_not_raise(tmp_path, make_meter):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    path.mkdir()  # the spool file cannot be opened for writing
    meter = make_meter(url=f"redis://127.0.0.1:{free_ports(1, start=26500)[0]}", spool=spool)
    with meter.turn("u", "system_deepseek") as turn:
        rec = turn.record(input_tokens=1, output_tokens=1)
    assert rec.status == "lost" and "spool" in rec.error
    assert meter.turn_options.metrics.records_lost == 1


@pytest.fixture
def own_redis():
    """A Redis of this test's own (with AOF, so a restart keeps what it had): it gets stopped."""
    server = RedisServer(free_ports(1, start=27000)[0], ["--appendonly", "yes", "--appendfsync", "always"])
    server.start()
    yield server
    server.cleanup()


@pytest.mark.slow
def test_outage_spool_restart_replay_exact_totals(own_redis, tmp_path, clock, make_meter):
    """Redis goes away mid-run; the worker spools, restarts, Redis returns, replay is exact."""
    path = tmp_path / "worker.spool"
    clock.set(2026, 1, 31, 23, 0, 0)
    worker = make_meter(url=own_redis.url, spool=path)
    with worker.turn("ops", "system_deepseek") as turn:  # Redis up: counted
        for n in range(1, 4):
            assert (
                turn.record(
                    {"id": f"chatcmpl-{n}", "usage": {"prompt_tokens": 1000 * n, "completion_tokens": 100}}
                ).status
                == "counted"
            )
    own_redis.stop()
    spooled = []
    with worker.turn("ops", "system_deepseek") as turn:  # Redis away: check allowed
        assert turn.degraded
        for n in range(4, 54):
            rec = turn.record({"id": f"chatcmpl-{n}", "usage": {"prompt_tokens": 1000 * n, "completion_tokens": 100}})
            spooled.append(rec.status)
        clock.set(2026, 2, 1, 0, 0, 1)  # the outage spans the month end
        spooled.append(
            turn.record({"id": "chatcmpl-feb", "usage": {"prompt_tokens": 7, "completion_tokens": 0}}).status
        )
        turn.record(
            {"id": "chatcmpl-2", "usage": {"prompt_tokens": 2000, "completion_tokens": 100}}
        )  # a retry, spooled
    assert spooled == ["spooled"] * 51
    worker.close()
    assert Spool(path).pending_count() == 52

    own_redis.start()  # the same port, AOF kept the data
    clock.set(2026, 2, 1, 0, 5, 0)
    restarted = make_meter(url=own_redis.url, spool=path)  # a new worker process
    report = restarted.replay_spool()
    assert (report.sent, report.dead, report.pending) == (52, 0, False)
    jan = restarted.get_token_stats("ops", months=1)["history"]["2026-01"]["system_deepseek"]
    assert jan["input"] == 1000 * sum(range(1, 54))  # every call once, the retry too
    feb = restarted.get_token_stats("ops", months=0)["models"]["system_deepseek"]
    assert (feb["input_tokens"], feb["calls"]) == (7, 1)
    raw = own_redis.client().hgetall("quota:{ops}:2026-01")
    assert int(raw[b"system_deepseek:calls"]) == 53
    assert int(raw[b"system_used_nano"]) == 1_000_000 * sum(range(1, 54)) + 200_000 * 53
    assert restarted.replay_spool().sent == 0 and not Spool(path).has_pending()


@pytest.mark.slow
def test_a_record_that_landed_and_was_spooled_counts_once(own_redis, tmp_path, clock, make_meter):
    """The reply was lost on the way back, so the worker spooled a record Redis already had."""
    path = tmp_path / "w.spool"
    meter = make_meter(url=own_redis.url, spool=path)
    landed = meter.update_token_usage("amb", "system_deepseek", 500, 50, request_id="chatcmpl-amb")
    assert not landed.duplicate
    Spool(path).append(SpoolEntry("amb", "system_deepseek", 500, 50, "chatcmpl-amb", False, clock(), landed.cost_nano))
    assert meter.replay_spool().sent == 1
    assert meter.check_quota_available("amb", "system_deepseek").monthly_used_nano == landed.cost_nano


def test_a_record_refused_for_good_goes_to_the_dead_file(backend, tmp_path, make_meter):
    path = tmp_path / "w.spool"
    spool = Spool(path)
    spool.append(entry(1, user="dd"))
    spool.append(entry(2, user="dd", model_id="system_gone"))  # removed from the price table since
    spool.append(entry(3, user="dd"))
    meter = make_meter(backend, spool=spool)
    report = meter.replay_spool()
    assert (report.sent, report.dead) == (2, 1)
    assert b"system_gone" in path.with_name("w.spool.dead").read_bytes()
    assert meter.get_token_stats("dd", months=0)["models"]["system_deepseek"]["input_tokens"] == 4


# --- file modes, symbolic links and shared directories --------------------------------------------------


@pytest.fixture
def umask_022():
    """The usual umask, so that a mode left to the default would show as 0644/0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_every_spool_file_is_0600_and_every_directory_0700(tmp_path, umask_022):
    path = tmp_path / "a" / "b" / "w.spool"
    spool = Spool(path)
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b")) == (0o700, 0o700)
    spool.append(entry(1))
    with open(path, "ab") as f:
        f.write(b"0000dead not a record\n")  # unreadable: .bad
    spool.append(entry(2))
    seen = {p.name: mode(p) for p in path.parent.iterdir()}
    claim = spool.claim()
    ((first, end),) = claim.batch(1)
    claim.dead(first, "refused for good")  # .dead
    claim.ack(end, 1)  # .replaying.pos
    claim.release()
    seen |= {p.name: mode(p) for p in path.parent.iterdir()}
    assert [e.input_tokens for e in drain(spool)] == [2]
    seen |= {p.name: mode(p) for p in path.parent.iterdir()}
    assert set(seen) == {
        "w.spool",
        "w.spool.lock",
        "w.spool.claim",
        "w.spool.replaying",
        "w.spool.replaying.pos",
        "w.spool.dead",
        "w.spool.bad",
    }
    assert seen == {name: 0o600 for name in seen}


def test_a_symbolic_link_at_a_spool_path_is_never_written_through(tmp_path, umask_022):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "s").mkdir(mode=0o700)
    path = tmp_path / "s" / "w.spool"
    path.symlink_to(victim)
    spool = Spool(path)
    assert not spool.has_pending()  # a link is not a spool with records
    with pytest.raises(OSError):
        spool.append(entry(1))
    path.unlink()
    spool.append(entry(1))
    spool.append(entry(2))
    for name in ("w.spool.bad", "w.spool.replaying.pos.tmp"):
        path.with_name(name).symlink_to(victim)
    with open(path, "ab") as f:
        f.write(b"0000dead not a record\n")
    assert [e.input_tokens for e in drain(spool)] == [1, 2]  # the links are replaced or refused
    assert victim.read_bytes() == b"precious\n"
    assert path.with_name("w.spool.bad").is_symlink()


def test_a_quarantine_file_that_cannot_be_written_is_logged_and_the_replay_goes_on(tmp_path, caplog):
    spool = Spool(tmp_path / "w.spool")
    spool.append(entry(1))
    with open(spool.path, "ab") as f:
        f.write(b"0000dead not a record\n")
    spool.append(entry(2))
    spool.bad_path.symlink_to(tmp_path / "victim")
    assert [e.input_tokens for e in drain(spool)] == [1, 2]
    assert not (tmp_path / "victim").exists()
    assert "cannot keep it" in caplog.text and "not a record" in caplog.text


@pytest.mark.parametrize(
    "layout, refused",
    [
        ("0777", "writable by every user"),  # /tmp-like without the sticky bit
        ("1777", "writable by every user"),  # /tmp itself
        ("1777/0770", "not private"),  # a group-writable subdirectory of /tmp
        ("0777/0700", "without the sticky bit"),  # private, but its parent can be renamed
        ("1777/0700", None),  # a private subdirectory of /tmp: fine
        ("1777/new", None),  # made by quota: 0700
        ("0755/0700", None),
    ],
)
def test_a_spool_directory_other_users_can_write_is_refused(tmp_path, umask_022, layout, refused):
    directory = tmp_path / "top"
    modes = layout.split("/")
    for i, m in enumerate(modes):
        if m != "new":
            directory.mkdir()
            directory.chmod(int(m, 8))
        if i < len(modes) - 1:
            directory = directory / "sub"
    path = directory / "w.spool"
    if refused:
        with pytest.raises(ConfigError, match=refused):
            Spool(path)
        assert not path.exists()
    else:
        Spool(path).append(entry(1))
        assert mode(directory) == 0o700 and mode(path) == 0o600


def test_a_spool_directly_in_tmp_is_refused_with_advice(umask_022):
    with pytest.raises(ConfigError, match=r"writable by every user: put the spool in a private directory"):
        Spool(f"/tmp/quota-test-{os.getpid()}.spool")
    with pytest.raises(ConfigError):
        Meter.from_url("redis://127.0.0.1:1", spool=f"/tmp/quota-test-{os.getpid()}.spool")
