"""``quota token`` and ``quota serve`` (the README's main command), and gunicorn (production)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from quota._errors import InvalidInput
from quota._tokens import (
    InvalidToken,
    UserToken,
    check_not_revoked,
    mint_user_token,
    parse_ttl,
    tokens_valid_after_ms,
    verify_user_token,
)
from quota.cli import main
from quota.testing import free_ports

from .api_support import BASE_ENV, SECRET, SERVICE

ROOT = Path(__file__).resolve().parents[1]


# --- tokens ----------------------------------------------------------------------------------------------


def test_user_token_round_trip_expiry_and_tampering():
    token = mint_user_token(SECRET, "alice", 3600, now_s=1000)
    assert verify_user_token(SECRET, token, now_s=4599).user == "alice"
    assert verify_user_token(SECRET, token, now_s=4599).expires_at_s == 4600
    with pytest.raises(InvalidToken) as expired:
        verify_user_token(SECRET, token, now_s=4600)
    assert expired.value.expired
    head, sig = token.rsplit(".", 1)
    for bad in (token + "x", head + "." + sig[::-1], "x" + token, "", "a.b"):
        with pytest.raises(InvalidToken) as exc:
            verify_user_token(SECRET, bad, now_s=2000)
        assert not exc.value.expired
    with pytest.raises(InvalidToken):
        verify_user_token(SECRET + "-rotated", token, now_s=2000)


def test_tokens_carry_their_issue_time_and_a_revocation_refuses_the_older_ones():
    token = verify_user_token(SECRET, mint_user_token(SECRET, "alice", 3600, now_s=1000.1234), now_s=2000)
    assert token.issued_at_ms == 1_000_123
    check_not_revoked(token, None)
    check_not_revoked(token, 1_000_122)  # revoked a moment before it was minted: valid
    for valid_after_ms in (1_000_123, 1_000_124, 5_000_000):  # at or after its issue: revoked
        with pytest.raises(InvalidToken) as err:
            check_not_revoked(token, valid_after_ms)
        assert err.value.revoked and not err.value.expired
    with pytest.raises(InvalidToken) as err:  # no issue time: revoked by any revocation
        check_not_revoked(UserToken("alice", 4600), 1)
    assert err.value.revoked


def test_a_tampered_issue_time_is_refused():
    import hashlib

    from itsdangerous import URLSafeSerializer

    forge = URLSafeSerializer(SECRET, salt="quota.user-token.v1", signer_kwargs={"digest_method": hashlib.sha256})
    for bad in ("soon", True, 1.5, [1]):
        with pytest.raises(InvalidToken):
            verify_user_token(SECRET, forge.dumps({"u": "alice", "exp": 10**10, "iat_ms": bad}), now_s=0)


def test_mint_rejects_bad_input():
    for user, ttl in (("a b", 60), ("alice", 0), ("alice", True), ("alice", 401 * 86400)):
        with pytest.raises(InvalidInput):
            mint_user_token(SECRET, user, ttl)
    with pytest.raises(InvalidInput, match="secret"):
        mint_user_token("short", "alice", 60)


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), (" 2H ", 7200)]
)
def test_parse_ttl(text, seconds):
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "1w", "-5m", "1.5h", "401d", "h"])
def test_parse_ttl_rejects(text):
    with pytest.raises(InvalidInput):
        parse_ttl(text)


def test_token_command():
    runner = CliRunner()
    out = runner.invoke(main, ["token", "alice", "--ttl", "1h"], env={"QUOTA_SECRET_KEY": SECRET})
    assert out.exit_code == 0, out.output
    claims = verify_user_token(SECRET, out.output.strip())
    assert claims.user == "alice" and 3590 < claims.expires_at_s - time.time() <= 3600
    as_json = json.loads(runner.invoke(main, ["token", "bob", "--json"], env={"QUOTA_SECRET_KEY": SECRET}).output)
    assert verify_user_token(SECRET, as_json["token"]).user == "bob" and as_json["expires_at"].endswith("Z")


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["token", "alice"], {"QUOTA_SECRET_KEY": ""}, "QUOTA_SECRET_KEY is not set"),
        (["token", "alice", "--ttl", "forever"], {"QUOTA_SECRET_KEY": SECRET}, "ttl"),
        (["token", "al ice"], {"QUOTA_SECRET_KEY": SECRET}, "user id"),
    ],
)
def test_token_command_errors_exit_2(args, env, message):
    out = CliRunner().invoke(main, args, env=env)
    assert out.exit_code == 2 and message in out.output


def test_token_revoke_command(redis_server):
    """`quota token --revoke alice`: alice's tokens so far are refused, a new one works."""
    redis_server.client().flushall()
    runner = CliRunner()
    env = {"REDIS_URL": redis_server.url, "QUOTA_PREFIX": "clitest", "QUOTA_SECRET_KEY": ""}
    before = time.time()
    out = runner.invoke(main, ["token", "--revoke", "alice"], env=env)
    assert out.exit_code == 0, out.output
    assert "revoked every token of 'alice' issued until" in out.output
    client = redis_server.client()
    at_ms = tokens_valid_after_ms(client, "clitest", "alice")
    assert before * 1000 - 1 <= at_ms <= time.time() * 1000 + 1
    assert client.keys("*") == [b"clitest:{alice}:tokens_valid_after"]
    as_json = json.loads(runner.invoke(main, ["token", "bob", "--revoke", "--json"], env=env).output)
    assert as_json["user"] == "bob" and as_json["tokens_valid_after"].endswith("Z")
    minted = runner.invoke(main, ["token", "alice"], env={"QUOTA_SECRET_KEY": SECRET}).output.strip()
    assert verify_user_token(SECRET, minted).issued_at_ms > at_ms  # minted afterwards: valid


@pytest.mark.parametrize(
    "args, env, code, message",
    [
        (["token", "--revoke", "al ice"], {"REDIS_URL": "redis://127.0.0.1:1"}, 2, "user id"),
        (["token", "--revoke", "alice"], {"REDIS_URL": ""}, 2, "REDIS_URL"),
        (["token", "--revoke", "alice"], {"REDIS_URL": "redis://127.0.0.1:1"}, 1, "unavailable"),
    ],
)
def test_token_revoke_errors(args, env, code, message):
    out = CliRunner().invoke(main, args, env=env)
    assert out.exit_code == code and message in out.output, out.output


# --- quota serve ----------------------------------------------------------------------------------------------


def get(url: str, token: str | None = None) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            body = r.read().decode()
            return r.status, json.loads(body) if r.headers.get_content_type() == "application/json" else body
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without quota's settings; the local server's default data directory in a
    fresh temporary one (never the home directory another suite running at once may use)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_") and k != "REDIS_URL"}
    data = tempfile.mkdtemp(prefix="quota-test-data-")
    return env | {"PYTHONUNBUFFERED": "1", "XDG_DATA_HOME": data} | extra


def start_serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quota.cli", "serve", "--port", "0", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "Ctrl+C" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("quota serve did not start:\n" + "\n".join(lines))


@pytest.mark.slow
def test_quota_serve_with_nothing_set_starts_a_local_redis_and_prints_working_urls():
    proc, lines = start_serve(clean_env())
    try:
        text = "\n".join(lines)
        assert "development mode" in text and "local" in text
        panel = re.search(r"panel\s+(http://\S+)/panel#user=(\S+)&token=(\S+)", text)
        assert panel, text
        base, user, token = panel.groups()
        assert re.search(rf"demo\s+{re.escape(base)}/demo#user={user}", text)
        assert f"{base}/panel#demo=1&user={user}" in text
        assert get(f"{base}/demo/users/{user}/token-stats")[0] == 200
        assert get(f"{base}/healthz") == (200, {"status": "ok", "redis": "ok", "history": "ok"})
        status, stats = get(f"{base}/v1/users/{user}/token-stats", token)
        assert status == 200 and stats["user"] == user
        assert get(f"{base}/v1/users/someone-else/token-stats", token)[0] == 403
        assert get(f"{base}/panel")[0] == 200 and get(f"{base}/demo")[0] == 200
        service = re.search(r"QUOTA_SERVICE_TOKEN=(\S+)", text).group(1)
        assert get(f"{base}/v1/models", service)[0] == 200
        redis_port = int(re.search(r"redis://127\.0\.0\.1:(\d+)", text).group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    import socket

    with pytest.raises(OSError):  # the local Redis went away with the service
        socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()


@pytest.mark.slow
def test_quota_serve_keeps_its_data_from_one_start_to_the_next(tmp_path):
    data = tmp_path / "data"
    env = clean_env()
    proc, lines = start_serve(env, "--data-dir", str(data))
    try:
        text = "\n".join(lines)
        assert f"data in {data}" in text
        base = re.search(r"API\s+(http://\S+)/v1/", text).group(1)
        service = re.search(r"QUOTA_SERVICE_TOKEN=(\S+)", text).group(1)
        body = json.dumps({"user": "keep", "model_id": "system_deepseek", "input_tokens": 10, "output_tokens": 1})
        request = urllib.request.Request(
            f"{base}/v1/usage",
            data=body.encode(),
            headers={"Authorization": f"Bearer {service}", "Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(request, timeout=10).status == 200
        second = subprocess.run(
            [sys.executable, "-m", "quota.cli", "serve", "--port", "0", "--data-dir", str(data)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 2 and "in use by another local server" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    proc, lines = start_serve(env, "--data-dir", str(data))  # the same directory: the same data
    try:
        text = "\n".join(lines)
        base = re.search(r"API\s+(http://\S+)/v1/", text).group(1)
        service = re.search(r"QUOTA_SERVICE_TOKEN=(\S+)", text).group(1)
        status, stats = get(f"{base}/v1/users/keep/token-stats", service)
        assert status == 200 and stats["models"]["system_deepseek"]["input_tokens"] == 10
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    proc, lines = start_serve(env, "--ephemeral")
    try:
        assert str(data) not in "\n".join(lines) and "quota-local-" in "\n".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_quota_serve_refuses_to_start_in_production_without_secrets(redis_server):
    env = clean_env(REDIS_URL=redis_server.url)
    out = subprocess.run(
        [sys.executable, "-m", "quota.cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "QUOTA_ADMIN_TOKEN is not set" in out.stderr


@pytest.mark.slow
def test_quota_serve_in_production_with_secrets_prints_no_token(redis_server):
    """A production banner ends up in logs: it names the way to a token, never a token."""
    proc, lines = start_serve(clean_env(REDIS_URL=redis_server.url, **BASE_ENV), "--no-dev", "--user", "carol")
    try:
        text = "\n".join(lines)
        assert "production mode" in text and "gunicorn" in text and SERVICE not in text
        assert "demo " not in text  # the demo is off in production
        assert "token=<token>" in text and "quota token <user>" in text and "carol" not in text
        assert not re.search(r"[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}", text)  # nothing shaped like a token
        base = re.search(r"API\s+(http://\S+)/v1/", text).group(1)
        token = mint_user_token(SECRET, "carol", 600)
        assert get(f"{base}/v1/users/carol/quota?model_id=system_deepseek", token)[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)


# --- gunicorn: the README's production command ----------------------------------------------------------------


@pytest.mark.slow
def test_gunicorn_workers_serve_the_app_and_metrics_add_up_across_workers(redis_server, tmp_path):
    pytest.importorskip("gunicorn")
    port = free_ports(1, start=27000)[0]
    metrics_dir = tmp_path / "prom"  # exported, not created: gunicorn.conf.py creates it
    log_file = tmp_path / "gunicorn.log"
    env = clean_env(REDIS_URL=redis_server.url, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), **BASE_ENV)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "quota_server:create_app()",
            "-w",
            "3",
            "-b",
            f"127.0.0.1:{port}",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log_file.open("w"),  # a file, not a pipe: the access log would fill a pipe and stall gunicorn
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log_file.read_text()
                time.sleep(0.1)
        sent = 1
        with ThreadPoolExecutor(8) as pool:  # concurrent requests spread over the workers
            for _ in range(20):
                assert all(status == 200 for status, _ in pool.map(lambda _: get(f"{base}/healthz"), range(40)))
                sent += 40
                if len({p.name for p in metrics_dir.glob("counter_*.db")}) > 1:
                    break
        assert len(list(metrics_dir.glob("counter_*.db"))) > 1  # several workers answered
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "quota_http_requests_total" and s.labels.get("route") == "/healthz"
        )
        assert total == sent  # every worker's answers, whichever worker serves the scrape
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = log_file.read_text()
    # every line with a UTC time and a level: gunicorn's own, the access log and the app's
    stamped = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(stamped.match(line) for line in lines), log[:2000]
    assert any("QUOTA_HISTORY_URL is not set" in line and " WARNING " in line for line in lines)
    assert any('"GET /healthz HTTP/1.1" 200' in line for line in lines)  # the access log
