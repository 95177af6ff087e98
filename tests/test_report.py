"""The month report (``Meter.month_report``, issue 13): per-user rows, totals per model, users near
or over the credit; the live month from Redis (SCAN, pipelined HGETALL, every master), a past month
from SQL merged with Redis; pages with a keyset cursor; never a slow command."""

from __future__ import annotations

from decimal import Decimal

import pytest

from quota import InvalidInput, Meter
from quota._prices import PriceTable
from quota._report import CSV_HEADER, MonthReportBuilder, ReportCache, csv_rows, decode_cursor
from quota._stats import MonthUsage
from quota.history import HistoryStore, dump_expired_months

from .history_support import history_url, store  # noqa: F401 - fixtures

SYS, CUS = "system_deepseek", "custom_llama"
PRICE = {"cost_per_1k_input": "0.004", "cost_per_1k_output": "0.008"}


def record(meter, user, model, tokens_in, tokens_out=0, rid=None):
    price = PRICE if model.startswith("custom") else None
    return meter.update_token_usage(user, model, tokens_in, tokens_out, request_id=rid, price=price)


def test_rows_summary_and_sorts(any_meter):
    m = any_meter
    per_1k = m.get_model_cost_config(SYS)["cost_per_1k_input"]
    # enough input tokens for a given spend on SYS (input only): tokens = cny / per_1k * 1000
    tokens = lambda cny: int(Decimal(cny) / Decimal(str(per_1k)) * 1000)  # noqa: E731
    record(m, "ann", SYS, tokens("6"))
    record(m, "ann", CUS, 1000, 500)
    record(m, "bob", SYS, tokens("4"))  # 80 % of 5
    record(m, "cat", SYS, tokens("1"), 10)
    record(m, "cat", SYS, 5, 5)
    record(m, "dan", CUS, 100_000, 100_000)
    m.set_monthly_credit("eve", "20")
    m.set_monthly_credit("bob", "4")  # bob now at 100 %

    report = m.month_report()
    rows = list(report)
    s = report.summary
    assert [r.user for r in rows] == ["ann", "bob", "dan", "cat", "eve"]
    ann = rows[0]
    assert ann.calls == 2 and ann.custom_cost_nano == 8_000_000 and ann.system_cost_nano == 6_000_000_000
    assert ann.cost_nano == 6_008_000_000 and ann.exceeded and ann.percent_used == 120.0
    bob = rows[1]
    assert bob.credit_set and bob.credit_nano == 4_000_000_000 and bob.percent_used == 100.0
    eve = rows[-1]
    assert eve.cost_nano == 0 and eve.credit_set and eve.credit_nano == 20_000_000_000
    assert s.month == "2026-01" and s.current and s.users == 5 and s.sources == ("redis",)
    assert (s.users_over_80, s.users_over_100) == (2, 2)
    assert set(s.models) == {SYS, CUS}
    assert s.models[SYS].users == 3 and s.models[SYS].calls == 4 and s.models[SYS].is_system
    assert s.models[CUS].users == 2 and not s.models[CUS].is_system
    assert s.system_cost_nano == sum(r.system_cost_nano for r in rows) == s.models[SYS].cost_nano
    assert s.custom_cost_nano == s.models[CUS].cost_nano == 8_000_000 + 1_200_000_000
    assert s.input_tokens == sum(r.input_tokens for r in rows)
    data = s.as_dict()
    assert data["users_over_100"] == 2 and list(data["models"]) == [SYS, CUS]  # by cost

    assert [r.user for r in m.month_report(top=2)] == ["ann", "bob"]
    assert [r.user for r in m.month_report(sort="user")] == ["ann", "bob", "cat", "dan", "eve"]
    assert [r.user for r in m.month_report(sort="custom_cost", top=1)] == ["dan"]
    assert [r.user for r in m.month_report(sort="share")][:2] == ["ann", "bob"]
    assert [r.user for r in m.month_report(sort="tokens", top=1)] == ["ann"]
    with pytest.raises(InvalidInput, match="sort must be one of"):
        m.month_report(sort="bogus")
    with pytest.raises(InvalidInput):
        m.month_report(month="2026-13")
    assert list(m.month_report(month="2025-06")) == []  # nothing then


def test_pages_cover_every_user_once_in_order(any_meter):
    m = any_meter
    for i in range(57):
        record(m, f"u{i:02d}", SYS, 1000 * (i % 9 + 1))  # many ties: the user id breaks them
    for sort in ("cost", "user", "share", "calls"):
        data = m.month_data()
        seen, cursor = [], None
        while True:
            rows, cursor = data.page(sort=sort, limit=8, cursor=cursor)
            seen += rows
            if cursor is None:
                break
        assert [r.user for r in seen] == [r.user for r in data.report(sort=sort)]
        assert len({r.user for r in seen}) == 57
    before = [r.user for r in data.report(sort="cost")]
    rows, cursor = data.page(sort="cost", limit=5)
    record(m, "u00", SYS, 10**7)  # u00 jumps to the top; the next page goes on after the 5th row
    later, _ = m.month_data(fresh=True).page(sort="cost", limit=5, cursor=cursor)
    assert [r.user for r in later] == before[5:10]
    with pytest.raises(InvalidInput, match="made for sort=cost"):
        data.page(sort="user", cursor=cursor)
    for bad in ("x", "!!!", "e30", ""):
        with pytest.raises(InvalidInput, match="cursor"):
            data.page(cursor=bad)
    with pytest.raises(InvalidInput, match="limit"):
        data.page(limit=0)


def test_the_read_is_cached_for_a_while(backend, clock):
    meter = Meter(backend.sync_client(), clock=clock, prefix="quota", report_cache_s=60)
    try:
        record(meter, "ann", SYS, 1000)
        assert meter.month_report().summary.calls == 1
        record(meter, "ann", SYS, 1000)
        assert meter.month_report().summary.calls == 1  # cached
        assert meter.month_data(fresh=True).summary.calls == 2
    finally:
        meter.close()
    uncached = Meter(backend.sync_client(), clock=clock, prefix="quota", report_cache_s=0)
    try:
        record(uncached, "bob", SYS, 1000)
        assert uncached.month_report().summary.calls == 3
        record(uncached, "bob", SYS, 1000)
        assert uncached.month_report().summary.calls == 4
    finally:
        uncached.close()


def test_cache_expires_and_keeps_few_months():
    now = [0.0]
    cache = ReportCache(10, clock=lambda: now[0])
    data = MonthReportBuilder("2026-01", PriceTable(), 5, current=True).finish(sources=(), unreadable=0, now=None)
    for month in ("2026-01", "2026-02", "2026-03", "2026-04", "2026-05"):
        cache.put(month, data)
    assert cache.get("2026-01") is None and cache.get("2026-05") is data
    now[0] = 10.0
    assert cache.get("2026-05") is None


def test_a_hash_that_does_not_parse_is_left_out_and_counted(any_meter, raw):
    record(any_meter, "ann", SYS, 1000)
    raw.hset("quota:{zed}:2026-01", mapping={f"{SYS}:calls": "many"})
    raw.hset("quota:{bogus}:2026-01:x", "a", "1")  # not a month key
    report = any_meter.month_report()
    assert [r.user for r in report] == ["ann"] and report.summary.unreadable == 1


def test_a_past_month_merges_the_archive_with_what_is_still_in_redis(backend, clock, store, make_meter):  # noqa: F811
    meter = Meter(backend.sync_client(), clock=clock, prefix="quota", history=store, report_cache_s=0)
    either = make_meter(backend, prefix="quota", history=store, report_cache_s=0)  # the test's side
    try:
        clock.set(2025, 12, 10, 12, 0)
        for i in range(30):  # spread over every master of a cluster
            record(meter, f"user{i}", SYS, 1000 * (i + 1), rid=f"a{i}")
        record(meter, "ann", CUS, 500, 500)
        meter.set_monthly_credit("ann", "9")
        expected = {r.user: r for r in meter.month_report("2025-12")}
        clock.set(2026, 1, 2, 0, 10)
        report = dump_expired_months(meter, store)
        assert report.archived == 31
        clock.set(2025, 12, 31, 23, 59)  # a late record reaches the archived month
        record(meter, "user3", SYS, 7, rid="late")
        record(meter, "newbie", SYS, 7, rid="late")
        clock.set(2026, 1, 2, 0, 20)
        past = either.month_report("2025-12")
        rows = {r.user: r for r in past}
        assert past.summary.sources == ("redis", "sql") and not past.summary.current
        assert set(rows) == set(expected) | {"newbie"}
        assert rows["user3"].calls == expected["user3"].calls + 1
        assert rows["user3"].input_tokens == expected["user3"].input_tokens + 7
        assert rows["ann"].credit_nano == 9_000_000_000 and rows["ann"].credit_set
        for user in set(expected) - {"user3"}:
            assert rows[user] == expected[user]
        # the export sees the same users, each once
        exported = {user: usage for page in meter.month_usage("2025-12") for user, usage in page}
        assert set(exported) == set(rows)
        assert exported["user3"].models[SYS].calls == rows["user3"].calls
    finally:
        meter.close()


def test_reading_a_version_1_history_works_until_the_dump_migrates_it(tmp_path):
    from sqlalchemy import text

    from quota.history.store import SCHEMA_VERSION

    url = f"sqlite:///{tmp_path}/h.db"
    s = HistoryStore(url)
    s.ensure_schema()
    with s.engine.begin() as conn:
        conn.execute(text("DROP INDEX quota_month_snapshot_by_month"))
        conn.execute(text("UPDATE quota_schema_version SET version = 1"))
    s.close()
    old = HistoryStore(url)
    assert list(old.iter_month("2025-12")) == []  # readable
    assert old.ensure_schema() == SCHEMA_VERSION
    with old.engine.connect() as conn:
        assert conn.execute(text("SELECT version FROM quota_schema_version")).scalar_one() == SCHEMA_VERSION
        names = {r[1] for r in conn.execute(text("PRAGMA index_list(quota_month_snapshot)"))}
    assert "quota_month_snapshot_by_month" in names
    old.close()


def test_csv_rows_one_per_user_and_model():
    from quota._stats import ModelUsage

    usage = MonthUsage("2026-01", credit_nano=None, system_used_nano=2_500_000_000)
    usage.models[SYS] = ModelUsage(10, 20, 2_500_000_000, 3, 1)
    usage.models[CUS] = ModelUsage(1, 2, 7, 1, 0)
    rows = csv_rows("2026-01", "ann", usage, PriceTable(), 5_000_000_000)
    assert len(CSV_HEADER) == len(rows[0])
    assert [r[2] for r in rows] == [CUS, SYS]
    assert rows[1][3:] == ("true", 10, 20, 3, 1, Decimal("2.5"), Decimal("2.5"), Decimal(5), 50.0, 0, 0)
    credit_only = MonthUsage("2026-01", credit_nano=7)
    assert csv_rows("2026-01", "eve", credit_only, PriceTable(), 5)[0][2] == ""
    assert csv_rows("2026-01", "nobody", MonthUsage("2026-01"), PriceTable(), 5) == []


def test_cursor_values_round_trip():
    from quota._report import encode_cursor

    assert decode_cursor(encode_cursor("share", float("inf"), "a"), "share") == (float("-inf"), "a")
    assert decode_cursor(encode_cursor("cost", 12, "b"), "cost") == (-12, "b")
    assert decode_cursor(encode_cursor("user", "c", "c"), "user") == "c"
    with pytest.raises(InvalidInput):
        decode_cursor(encode_cursor("cost", 1.5, "b"), "cost")


def test_no_command_is_slow_and_no_keys(redis_server, clock):
    """A report over 60,000 user-months among 120,000 keys: SLOWLOG (at 10 ms) stays empty and
    KEYS is never sent; every user is counted once.

    On a shared machine a command can be slow because Redis was not given the CPU (SLOWLOG times
    the wall clock): a run is tried up to three times, and one must be clean. A command that is
    slow by itself (KEYS over these keys takes 10 to 20 ms here) is slow every time."""
    client = redis_server.client()
    client.flushall()
    users = 60_000
    pipe = client.pipeline(transaction=False)
    for i in range(users):
        pipe.hset(f"rep:{{u{i}}}:2026-01", mapping={f"{SYS}:cost_nano": i, f"{SYS}:calls": 1, "system_used_nano": i})
        pipe.set(f"rep:{{u{i}}}:req:r{i}", "x")
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    before = client.info("commandstats").get("cmdstat_keys", {}).get("calls", 0)
    meter = Meter.from_url(redis_server.url, clock=clock, prefix="rep", history=None, report_cache_s=0)
    slow = []
    try:
        client.config_set("slowlog-log-slower-than", 10_000)
        for _ in range(3):
            client.slowlog_reset()
            report = meter.month_report(top=3)
            assert report.summary.users == users and report.summary.calls == users
            assert [r.user for r in report] == ["u59999", "u59998", "u59997"]
            slow = client.slowlog_get(128)
            if not slow:
                break
        assert slow == []
        assert client.info("commandstats").get("cmdstat_keys", {}).get("calls", 0) == before
    finally:
        meter.close()
        client.flushall()
        client.close()


def test_the_report_command(redis_server, monkeypatch, tmp_path):
    import csv
    import io
    import json

    from click.testing import CliRunner

    from quota.cli import main

    client = redis_server.client()
    client.flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("QUOTA_HISTORY_URL", f"sqlite:///{tmp_path}/h.db")
    meter = Meter.from_url(redis_server.url, history=None)
    month = meter.core.current_month()
    for i in range(30):
        record(meter, f"u{i:02d}", SYS, 1000 * (i + 1))
    record(meter, "u00", CUS, 10, 10)
    meter.close()
    runner = CliRunner()
    result = runner.invoke(main, ["report"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{month} (live, from Redis): 30 users, 31 calls")
    assert "system_deepseek  system" in result.output and "users by cost:" in result.output
    assert sum(line.startswith("u") and line[1:3].isdigit() for line in lines) == 20  # 20 by default
    assert "reading" not in result.output  # no progress off a terminal

    result = runner.invoke(main, ["report", "--format", "json", "--top", "2", "--sort", "user"])
    data = json.loads(result.output)
    assert [u["user"] for u in data["users"]] == ["u00", "u01"] and data["summary"]["users"] == 30

    result = runner.invoke(main, ["report", "--format", "csv"])
    rows = list(csv.reader(io.StringIO(result.output)))
    assert tuple(rows[0]) == CSV_HEADER and len(rows) == 1 + 31
    result = runner.invoke(main, ["report", "--format", "csv", "--top", "1"])
    rows = list(csv.reader(io.StringIO(result.output)))
    assert [r[1] for r in rows[1:]] == ["u29"]

    result = runner.invoke(main, ["report", "--month", "2026-13"])
    assert result.exit_code == 2 and "invalid month" in result.output
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = runner.invoke(main, ["report"])
    assert result.exit_code == 1 and "127.0.0.1:1" in result.output


def test_prefetch_hands_over_errors_and_stops_when_the_caller_does():
    import asyncio

    from quota._async._compat import prefetch as aprefetch
    from quota._sync._compat import prefetch

    def failing():
        yield 1
        raise RuntimeError("boom")

    pages = prefetch(failing())
    assert next(pages) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(pages)
    made = []

    def many():
        for i in range(1000):
            made.append(i)
            yield i

    pages = prefetch(many())
    assert next(pages) == 0
    pages.close()
    assert len(made) <= 3

    async def afailing():
        yield 1
        raise RuntimeError("boom")

    async def drive():
        out = []
        with pytest.raises(RuntimeError, match="boom"):
            async for item in aprefetch(afailing()):
                out.append(item)
        return out

    assert asyncio.run(drive()) == [1]


def test_archived_rows_are_added_as_merged_months_would_be():
    """The fast path (one generation, nothing live) and the merge (several generations, or a live
    hash of the same month) give what merge_month + add_usage give."""
    from quota._stats import ModelUsage, merge_month, parts_from_rows

    month = "2025-12"
    rows = [
        ("ann", 1, None, 100, SYS, 10, 1, 100, 1, 0, 6, 2),  # 6 of the 10 input tokens hit the cache, 2 wrote it
        ("ann", 1, None, 100, CUS, 5, 5, 7, 2, 1, 1, 0),
        ("bob", 2, 9_000_000_000, 50, SYS, 1, 1, 50, 1, 0, 0, 0),
        ("bob", 3, None, 30, SYS, 2, 2, 30, 1, 0, 0, 0),  # a second generation (a late write, archived apart)
        ("cat", 4, None, 0, None, 0, 0, 0, 0, 0, 0, 0),  # an empty month: left out
        ("dan", 5, 7_000_000_000, 0, None, 0, 0, 0, 0, 0, 0, 0),  # a credit and nothing else
        ("eve", 6, None, 40, SYS, 4, 4, 40, 1, 0, 0, 0),
    ]
    live = MonthUsage(month, system_used_nano=45, archive_gen=6)  # eve's hash, grown since the dump
    live.models[SYS] = ModelUsage(5, 5, 45, 2, 0)
    fast = MonthReportBuilder(month, PriceTable(), 5_000_000_000, current=False)
    fast.add_archived(rows, {"eve": live})
    reference = MonthReportBuilder(month, PriceTable(), 5_000_000_000, current=False)
    for user in ("ann", "bob", "cat", "dan", "eve"):
        mine = [r for r in rows if r[0] == user]
        reference.add_usage(user, merge_month(month, live if user == "eve" else None, parts_from_rows(month, mine)))
    a = fast.finish(sources=(), unreadable=0, now=None)
    b = reference.finish(sources=(), unreadable=0, now=None)
    assert [a.row(i) for i in range(len(a))] == [b.row(i) for i in range(len(b))]
    assert a.summary == b.summary and a.users == ["ann", "bob", "dan", "eve"]
    assert a.row(1).system_used_nano == 80 and a.row(3).calls == 2  # eve: the live hash supersedes gen 6
    assert (a.row(0).cached_input_tokens, a.row(0).cache_write_tokens) == (7, 2)


def test_a_report_can_leave_redis_to_the_hot_path(redis_server, clock, monkeypatch):
    """QUOTA_REPORT_REDIS_SHARE: after each page the report pauses so that its round trips fill at
    most that share of the time (four times the round trip at 0.2)."""
    from quota import ConfigError, Settings
    from quota._report import MAX_PAUSE_S, pause_after
    from quota._sync import meter as sync_meter

    assert pause_after(0.002, 1.0) == 0 and pause_after(0.002, 0.2) == pytest.approx(0.008)
    assert pause_after(10.0, 0.01) == MAX_PAUSE_S
    assert Settings.from_env({"QUOTA_REPORT_REDIS_SHARE": "0.25"}).report_redis_share == 0.25
    with pytest.raises(ConfigError):
        Settings.from_env({"QUOTA_REPORT_REDIS_SHARE": "0"})
    client = redis_server.client()
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(3000):
        pipe.hset(f"quota:{{u{i}}}:2026-01", mapping={f"{SYS}:calls": 1, "system_used_nano": 1})
    pipe.execute()
    pauses: list[float] = []
    monkeypatch.setattr(sync_meter, "sleep", pauses.append)
    for share, paused in ((1.0, False), (0.2, True)):
        pauses.clear()
        meter = Meter.from_url(redis_server.url, clock=clock, history=None, report_redis_share=share)
        try:
            assert meter.month_report().summary.users == 3000
        finally:
            meter.close()
        assert bool(pauses) is paused and all(p > 0 for p in pauses)
    client.flushall()


def test_a_users_plan_is_the_credit_of_a_month_without_its_own(any_meter, raw):
    """The month's credit is its own top-up, else the plan, else the default (as the check has it):
    the 80 %/100 % counts, the share and the export use it (issue 13 follow-up)."""
    m = any_meter
    per_1k = m.get_model_cost_config(SYS)["cost_per_1k_input"]
    tokens = lambda cny: int(Decimal(cny) / Decimal(str(per_1k)) * 1000)  # noqa: E731
    for i in range(12):  # spread over every master of a cluster: a plan on each
        record(m, f"p{i}", SYS, tokens("6"))  # 120 % of the default (5), 60 % of a 10 CNY plan
        m.set_plan_credit(f"p{i}", "10")
    record(m, "top", SYS, tokens("6"))
    m.set_plan_credit("top", "10")
    m.set_monthly_credit("top", "6")  # the month's own credit wins over the plan: 100 %
    record(m, "plain", SYS, tokens("4"))  # 80 % of the default
    rows = {r.user: r for r in m.month_report()}
    assert rows["p3"].credit_nano == 10_000_000_000 and not rows["p3"].credit_set
    assert rows["p3"].percent_used == 60.0 and not rows["p3"].exceeded
    assert rows["top"].credit_nano == 6_000_000_000 and rows["top"].exceeded
    assert rows["plain"].credit_nano == 5_000_000_000 and rows["plain"].percent_used == 80.0
    s = m.month_data().summary
    assert (s.users, s.users_over_80, s.users_over_100) == (14, 2, 1)
    if isinstance(m, Meter):  # the export (one code for both: AsyncAsSync does not wrap generators)
        exported = {user: usage for page in m.month_usage() for user, usage in page}
        assert exported["p5"].credit_nano == 10_000_000_000 and exported["plain"].credit_nano is None
    raw.set("quota:{plain}:plan", "lots")  # written by hand: left out, the month reads with the default
    assert {r.user: r for r in m.month_data(fresh=True).page(limit=100)[0]}["plain"].credit_nano == 5_000_000_000


def test_cache_tokens_per_user_in_rows_and_the_text_table(any_meter):
    """Each user's cached and cache-write input tokens (summed over models) in the rows, the JSON and
    ``quota report``'s tables (issue 12's cache columns, per user as per model)."""
    from quota.cli import report_text

    m = any_meter
    m.update_token_usage("ann", SYS, 9000, 10, cached_input_tokens=7000, cache_write_tokens=1000)
    m.update_token_usage("ann", SYS, 1000, 10, cached_input_tokens=500)
    m.update_token_usage("bob", SYS, 100, 10)
    rows = {r.user: r for r in m.month_report()}
    assert (rows["ann"].cached_input_tokens, rows["ann"].cache_write_tokens) == (7500, 1000)
    assert rows["ann"].as_dict()["cached_input_tokens"] == 7500 and rows["bob"].as_dict()["cache_write_tokens"] == 0
    lines = report_text(m.month_report()).splitlines()
    header = next(line for line in lines if line.startswith("user "))
    assert header.split()[6:10] == ["input", "cached", "cache", "write"]  # after "cost CNY"
    ann = next(line for line in lines if line.startswith("ann ")).split()
    assert ann[5:8] == ["10,000", "7,500", "1,000"]
    model = next(line for line in lines if line.startswith(SYS)).split()
    assert model[4:7] == ["10,100", "7,500", "1,000"]


def test_an_archived_month_keeps_the_plan_in_force(backend, clock, store, make_meter):  # noqa: F811
    """The dump archives a month without its own credit with the user's plan (the credit in force),
    so that the archived report counts against it; a month with its own credit keeps that."""
    meter = Meter(backend.sync_client(), clock=clock, prefix="quota", history=store, report_cache_s=0, monthly_credit=5)
    try:
        clock.set(2025, 12, 10, 12, 0)
        per_1k = meter.get_model_cost_config(SYS)["cost_per_1k_input"]
        six = int(Decimal("6") / Decimal(str(per_1k)) * 1000)  # 6 CNY of input on SYS
        for i in range(12):  # spread over every master of a cluster
            record(meter, f"p{i}", SYS, six, rid=f"p{i}")
            meter.set_plan_credit(f"p{i}", "10")
        record(meter, "own", SYS, six, rid="own")
        meter.set_plan_credit("own", "10")
        meter.set_monthly_credit("own", "6")
        record(meter, "plain", SYS, six, rid="plain")
        live = {r.user: r.credit_nano for r in meter.month_report("2025-12")}
        clock.set(2026, 1, 2, 0, 10)
        assert dump_expired_months(meter, store).archived == 14
        past = make_meter(backend, prefix="quota", history=store, report_cache_s=0, monthly_credit=5)
        report = past.month_report("2025-12")
        rows = {r.user: r for r in report}
        assert report.summary.sources == ("redis", "sql") and {u: r.credit_nano for u, r in rows.items()} == live
        assert rows["p7"].credit_nano == 10_000_000_000 and not rows["p7"].exceeded
        assert rows["own"].credit_nano == 6_000_000_000 and rows["plain"].credit_nano == 5_000_000_000
        assert (report.summary.users_over_80, report.summary.users_over_100) == (2, 2)
        [month] = store.load_months("p3", ["2025-12"])
        assert month.credit_nano == 10_000_000_000
    finally:
        meter.close()
