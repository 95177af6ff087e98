"""The ``quota`` command line: demo, stats and credit against a real Redis."""

import json

from click.testing import CliRunner

from quota.cli import main


def test_demo_runs_until_a_user_is_refused(redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    result = CliRunner().invoke(main, ["demo", "--users", "4"])
    assert result.exit_code == 0, result.output
    assert "refused on message" in result.output and "quota_exceeded" in result.output
    assert "custom_llama" in result.output and "system_deepseek" in result.output
    assert "额度" in result.output  # the friendly notice, in Chinese and English


def test_demo_starts_its_own_server_when_redis_url_is_unset(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["demo", "--users", "2"])
    assert result.exit_code == 0, result.output
    assert "a local" in result.output and "refused" in result.output


def test_credit_and_stats(redis_server, monkeypatch):
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    runner = CliRunner()
    result = runner.invoke(main, ["credit", "alice", "12.5"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["monthly_credit"] == 12.5  # what was done goes to stderr
    result = runner.invoke(main, ["stats", "alice"])
    assert result.exit_code == 0 and json.loads(result.output)["monthly_credit"] == 12.5


def test_bad_input_exits_non_zero_with_a_clear_message(redis_server, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    runner = CliRunner()
    result = runner.invoke(main, ["credit", "a{b}", "1"])
    assert result.exit_code == 1 and "invalid user id" in result.output
    result = runner.invoke(main, ["credit", "alice", "--", "-3"])
    assert result.exit_code == 1 and "negative" in result.output
    result = runner.invoke(main, ["credit", "alice", "lots"])
    assert result.exit_code == 1 and "number" in result.output
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = runner.invoke(main, ["stats", "alice"])
    assert result.exit_code == 1 and "127.0.0.1:1" in result.output
