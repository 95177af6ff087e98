"""The benchmark code runs: every scenario for a fraction of a second against the harness servers.

Rates are only checked to be positive, never compared: speed is measured by ``python -m bench
<area>``, not by tests. What is checked is that every workload really counted records, that
the server-time reading works, and the seed design's loss accounting adds up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import __main__ as bench_main
from bench import scale, scenarios, server_ceiling, table
from bench.driver import Result

pytestmark = pytest.mark.slow

QUICK = {"rounds": 1, "slice_s": 0.2}


def assert_measured(results: dict[str, Result]) -> None:
    for name, result in results.items():
        assert result.rate > 0, name
        assert result.slices and all(s.records > 0 for s in result.slices), name
        assert result.server_usec_per_record is not None and result.server_usec_per_record > 0, name


def test_per_record_scenario(redis_server):
    client = redis_server.client()
    client.flushall()
    results = scenarios.per_record(redis_server.url, 2, stats_clients=[client], **QUICK)
    assert set(results) == {"meter", "raw", "limits", "seed", "seed_hot"}
    assert_measured(results)
    for name in ("seed", "seed_hot"):
        facts = results[name].facts
        assert facts["sent_tokens"] > 0
        assert 0 <= facts["stored_tokens"] <= facts["sent_tokens"]
        assert facts["lost_share"] == pytest.approx(1 - facts["stored_tokens"] / facts["sent_tokens"])
    client.flushall()


def test_batch_and_async_scenarios(redis_server):
    client = redis_server.client()
    client.flushall()
    batch = scenarios.batches(redis_server.url, sizes=(20,), stats_clients=[client], **QUICK)
    assert set(batch) == {"meter_20", "raw_20"}
    assert_measured(batch)
    tasks = scenarios.async_tasks(redis_server.url, tasks=10, stats_clients=[client], **QUICK)
    assert set(tasks) == {"meter", "raw"}
    assert_measured(tasks)
    client.flushall()


@pytest.mark.skipif(server_ceiling.binary() is None, reason="redis-benchmark is not installed")
def test_server_ceiling_scenario(redis_server):
    client = redis_server.client()
    ceilings = scenarios.server_ceilings(redis_server.port, client, pipelines=(10,), **QUICK)
    assert ceilings[10] is not None and ceilings[10].rate > 0
    assert ceilings[10].server_usec_per_record > 0


def test_memory_scenario(redis_server):
    facts = scenarios.user_month_memory(redis_server.url, calls=50, user_months=500)
    assert facts.fields == 5  # input, output, cost_nano, calls, system_used_nano
    assert facts.memory_usage_bytes > 0
    assert facts.copy_memory_usage_bytes == facts.memory_usage_bytes  # the copies are the same hash
    assert facts.growth_per_user_month > 0


@pytest.mark.cluster
def test_cluster_scenario(redis_cluster):
    stats = [node.client() for node in redis_cluster.nodes[: redis_cluster.masters]]
    redis_cluster.flushall()
    results = scenarios.cluster_per_record(redis_cluster.url, 1, stats_clients=stats, **QUICK)
    assert_measured(results)
    redis_cluster.flushall()


def test_core_table_and_docs_section(redis_server, tmp_path: Path):
    """The table has a row per figure, and the docs section replaces only its own section."""
    client = redis_server.client()
    client.flushall()
    m = table.Measurements(tasks=10)
    m.per_record[1] = scenarios.per_record(redis_server.url, 1, stats_clients=[client], **QUICK)
    m.memory = scenarios.user_month_memory(redis_server.url, calls=20, user_months=200)
    rows = table.rows(m)
    text = table.markdown(rows)
    assert "Meter.update_token_usage, 1 proc" in text and "MEMORY USAGE" in text
    assert all(r.passed in (True, False) for r in rows if r.target)
    checked = sum(r.passed is not None for r in rows)
    assert table.verdict(rows).startswith("Targets met in this run: ") and f"of {checked}." in table.verdict(rows)

    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Other area\n\nkeep me\n", encoding="utf-8")
    table.write_section(docs, "first")
    table.write_section(docs, "second")
    written = docs.read_text(encoding="utf-8")
    assert written.count(table.SECTION) == 1 and "second" in written and "first" not in written
    assert "## Other area\n\nkeep me" in written


def test_scale_rates_and_memory(redis_server):
    client = redis_server.client()
    client.flushall()
    results = scale.rates(redis_server.url, [client], processes=1, rounds=1, slice_s=0.2)
    assert set(results) == set(scale.WORKLOADS)
    assert_measured(results)
    memory = scale.measure_memory(client, 2000, 100)  # it samples 1,000 of the user-months
    assert memory["bytes_per_user_month_memory_usage"] > 0 and memory["hash_encoding"] == "listpack"
    client.flushall()


def test_every_area_answers_help(capsys):
    """``python -m bench`` lists the areas; each one's module has a main that parses --help."""
    assert bench_main.main(["--help"]) == 0 and "areas:" in capsys.readouterr().out
    assert bench_main.main(["nope"]) == 2
    for area in bench_main.AREAS:
        with pytest.raises(SystemExit) as done:
            bench_main.main([area, "--help"])
        assert done.value.code == 0, area
        assert f"python -m bench {area}" in capsys.readouterr().out


def test_alerts_area_runs(capsys):
    from bench import alerts

    assert alerts.main(["--records", "1000", "--keys", "2000", "--events", "20"]) == 0
    out = capsys.readouterr().out
    assert "alerts on (80,100)" in out and "IndexProbe" in out and "20 events, concurrency 4" in out


def test_targets_run_every_row_at_a_tiny_size(capsys, tmp_path: Path):
    """``python -m bench`` (bench/targets.py) at --quick: every row of issue 14's table is measured
    beside its peer from the same run (the API row needs wrk, the PostgreSQL row a server), and
    the section it writes replaces only itself."""
    from bench import targets

    rows, facts = targets.collect(["--quick"])
    assert len(rows) == 9 and "load average at end" in facts
    for row in rows:
        skipped = row.value is None and (row.note.startswith("wrk") or row.note.startswith("no PostgreSQL"))
        assert skipped or (row.value > 0 and row.ratio is not None and row.met in (True, False)), row
    text = targets.markdown(rows, facts, "python -m bench targets --quick")
    assert text.count("\n| ") == 1 + len(rows)  # the header, then one line per row
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text("# Benchmarks\n\n## Other area\n\nkeep me\n", encoding="utf-8")
    table.write_section(docs, text, targets.SECTION)
    table.write_section(docs, text, targets.SECTION)
    written = docs.read_text(encoding="utf-8")
    assert written.count(targets.SECTION) == 1 and "## Other area\n\nkeep me" in written
