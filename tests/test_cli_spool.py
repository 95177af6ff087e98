"""``quota spool replay PATH``: a worker's spool sent to Redis from the command line, with exit
statuses a script can act on (0 sent, 1 try again later, 2 bad usage, 3 some refused for good)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from quota import Meter, Settings
from quota.cli import main
from quota.testing import free_ports

SYS = "system_deepseek"
DOWN = f"redis://127.0.0.1:{free_ports(1, start=19800)[0]}/0"  # nothing listens


def spool_while_down(path: Path, model_ids: list[str], settings: Settings | None = None) -> None:
    """A worker whose Redis is away: each record of its turn goes to the spool at ``path``."""
    worker = Meter.from_url(DOWN, spool=path, history=None, settings=settings, socket_connect_timeout=0.2)
    with worker.turn("alice", SYS) as turn:
        for model_id in model_ids:
            assert turn.record(input_tokens=1000, output_tokens=1000, model_id=model_id).status == "spooled"
    worker.close()


def replay(path: Path, *args: str, env: dict[str, str] | None = None):  # noqa: ANN201
    return CliRunner().invoke(main, ["spool", "replay", str(path), *args], env=env)


@pytest.fixture
def redis_env(redis_server, monkeypatch):
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    return redis_server


def test_replay_sends_every_record_once_and_says_so(redis_env, tmp_path):
    spool = tmp_path / "worker" / "quota.spool"
    spool_while_down(spool, [SYS, SYS, "custom_x"])
    result = replay(spool)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "sent 3, dead 0, pending 0"
    meter = Meter.from_url(redis_env.url, history=None)
    stats = meter.get_token_stats("alice")
    assert stats["models"][SYS]["calls"] == 2 and stats["models"]["custom_x"]["calls"] == 1
    assert stats["monthly_used"] == 0.006
    again = replay(spool, "--json")  # nothing left: nothing counted twice
    assert again.exit_code == 0 and json.loads(again.output) == {"sent": 0, "dead": 0, "pending": 0, "error": None}
    assert meter.get_token_stats("alice")["monthly_used"] == 0.006
    meter.close()


def test_redis_still_away_exits_1_and_keeps_every_record(tmp_path):
    spool = tmp_path / "worker" / "quota.spool"
    spool_while_down(spool, [SYS, SYS])
    result = replay(spool, "--json", "--url", DOWN)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["sent"], report["dead"], report["pending"]) == (0, 0, 2)
    assert "unavailable" in report["error"] and "127.0.0.1" in report["error"]
    plain = replay(spool, "--url", DOWN)
    assert plain.exit_code == 1 and "sent 0, dead 0, pending 2" in plain.stdout
    assert "the replay stopped" in plain.stderr


def test_records_refused_for_good_go_to_the_dead_file_and_exit_3(redis_env, tmp_path):
    """A model the price table no longer has (the replay runs without the worker's prices file)."""
    prices = tmp_path / "prices.toml"
    prices.write_text('[system.system_gone]\nname = "Gone"\ncost_per_1k_input = "0.001"\ncost_per_1k_output = "0"\n')
    spool = tmp_path / "worker" / "quota.spool"
    spool_while_down(spool, [SYS, "system_gone"], Settings.from_env({"QUOTA_PRICES_FILE": str(prices)}))
    result = replay(spool)
    assert result.exit_code == 3, result.output
    assert result.stdout.strip() == "sent 1, dead 1, pending 0"
    assert f"kept in {spool}.dead" in result.stderr
    assert "system_gone" in Path(f"{spool}.dead").read_text()


def test_bad_usage_exits_2(redis_env, tmp_path):
    missing = replay(tmp_path / "nowhere" / "quota.spool")
    assert missing.exit_code == 2 and "no spool at" in missing.output
    assert not (tmp_path / "nowhere").exists()  # a typo creates nothing
    spool = tmp_path / "worker" / "quota.spool"
    spool_while_down(spool, [SYS])
    bad_url = replay(spool, "--url", "http://127.0.0.1:1")
    assert bad_url.exit_code == 2 and "unsupported Redis URL scheme" in bad_url.output
    assert CliRunner().invoke(main, ["spool", "--help"]).exit_code == 0
    assert "Exit status" in CliRunner().invoke(main, ["spool", "replay", "--help"]).output
