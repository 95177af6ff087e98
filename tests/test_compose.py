"""docker-compose.yml parses and wires Redis (AOF on, a password), PostgreSQL, the API (gunicorn),
the scheduler and the alert notifier, with no secret defaulted.

The file is read the way ``docker compose`` reads it: YAML, then its variable interpolation
(``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, ``$$``)
against a given environment, implemented here from the Compose specification so that the test
needs no Docker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from quota.history import parse_at

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (
    "QUOTA_ADMIN_TOKEN",
    "QUOTA_SERVICE_TOKEN",
    "QUOTA_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "QUOTA_WEBHOOK_SECRET",
    "QUOTA_WEBHOOK_URL",  # not a secret, but required all the same: the notifier has nowhere to send without it
)
ENV = {name: f"{name.lower().replace('_', '-')}-0123456789abcdef" for name in SECRETS}
ENV["QUOTA_WEBHOOK_SECRET"] = "whsec_" + "A" * 43 + "="  # 32 bytes of base64, as `quota notify --new-secret` makes
ENV["QUOTA_WEBHOOK_URL"] = "https://hooks.example.com/quota"
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\})")


class Missing(Exception):
    """A ``${VAR:?message}`` whose variable is unset: compose refuses to start with the message."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(1):
            return "$"
        name, op, arg = match.group(2), match.group(3), match.group(4)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise Missing(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return _VAR.sub(one, value)


def raw() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def load(env: dict[str, str] | None = None) -> dict:
    return interpolate(raw(), ENV if env is None else env)


def test_the_interpolation_follows_compose() -> None:
    """The helper above, on the forms the file uses: a refusal is a refusal, a default a default."""
    assert interpolate("a${X:-d}b${Y-e}$$", {"X": ""}) == "ad" + "be$"
    assert interpolate("${X:?need X}", {"X": "v"}) == "v"
    with pytest.raises(Missing, match="need X"):
        interpolate({"k": ["${X:?need X}"]}, {"X": ""})


def test_compose_names_the_five_services() -> None:
    services = load()["services"]
    assert {"redis", "postgres", "api", "scheduler", "notifier"} <= set(services)


def test_the_notifier_runs_quota_notify_with_a_valid_webhook() -> None:
    from quota._alerts import WebhookSettings

    notifier = load()["services"]["notifier"]
    assert notifier["command"] == ["quota", "notify"] and notifier["build"] == "."
    env = notifier["environment"]
    assert urlsplit(env["REDIS_URL"]).password == ENV["REDIS_PASSWORD"]
    settings = WebhookSettings.from_env(env)  # what `quota notify` reads at start: valid
    assert settings.url == ENV["QUOTA_WEBHOOK_URL"] and settings.secret == ENV["QUOTA_WEBHOOK_SECRET"]
    assert set(notifier["depends_on"]) == {"redis"}


@pytest.mark.parametrize("missing", SECRETS)
def test_compose_refuses_to_start_without_each_secret(missing: str) -> None:
    with pytest.raises(Missing, match=missing):
        load({k: v for k, v in ENV.items() if k != missing})
    with pytest.raises(Missing, match=missing):
        load({**ENV, missing: ""})


def test_no_secret_has_a_default_anywhere_in_the_file() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), (name, uses)
    assert "quota:quota@" not in text and "${POSTGRES_PASSWORD:-" not in text


def test_redis_keeps_an_append_only_file_on_a_volume_and_requires_a_password() -> None:
    redis = load()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == ENV["REDIS_PASSWORD"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    # the health check (redis-cli ping) must log in too, or Redis never turns healthy
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert redis["environment"]["REDISCLI_AUTH"] == ENV["REDIS_PASSWORD"]


def test_the_api_runs_gunicorn_with_metrics_summed_over_its_workers() -> None:
    api = load()["services"]["api"]
    command = api["command"]
    assert command[:4] == ["gunicorn", "-c", "gunicorn.conf.py", "quota_server:create_app()"]
    assert (ROOT / "gunicorn.conf.py").is_file() and "COPY gunicorn.conf.py ./" in (ROOT / "Dockerfile").read_text()
    assert int(command[command.index("--workers") + 1]) >= 2
    assert command[command.index("--bind") + 1] == "0.0.0.0:8000"
    metrics_dir = api["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert any(t.split(":")[0] == metrics_dir for t in api["tmpfs"])  # emptied at every start
    for name in ("QUOTA_ADMIN_TOKEN", "QUOTA_SERVICE_TOKEN", "QUOTA_SECRET_KEY"):
        assert api["environment"][name] == ENV[name]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("pip install '.[server]'") == 1  # the extra that brings gunicorn
    assert "USER quota" in dockerfile and "uid=10001" in api["tmpfs"][0] and "--uid 10001" in dockerfile


def test_api_and_scheduler_find_redis_and_postgres_with_their_passwords() -> None:
    compose = load()
    services = compose["services"]
    scheduler = services["scheduler"]["command"]
    assert scheduler[:2] == ["quota", "scheduler"]
    parse_at(scheduler[scheduler.index("--at") + 1])  # a valid HH:MM
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD"] == ENV["POSTGRES_PASSWORD"]
    for name in ("api", "scheduler"):
        env = services[name]["environment"]
        redis_url = urlsplit(env["REDIS_URL"])
        assert redis_url.hostname == "redis" and redis_url.password == ENV["REDIS_PASSWORD"]
        history = urlsplit(env["QUOTA_HISTORY_URL"])
        assert history.scheme == "postgresql" and history.hostname == "postgres"
        assert history.username == pg["POSTGRES_USER"] and history.path == "/" + pg["POSTGRES_DB"]
        assert history.password == pg["POSTGRES_PASSWORD"]
        assert set(services[name]["depends_on"]) == {"redis", "postgres"}
        assert services[name]["build"] == "."


def test_prometheus_and_grafana_are_provisioned_from_the_repository() -> None:
    services = load()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    mounts = {
        v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"] + grafana["volumes"] if v.startswith("./")
    }
    for source in mounts:
        assert (ROOT / source).exists(), source
    assert mounts["./ops/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"api:8000", "scheduler:9101"}
    scheduler = services["scheduler"]["command"]
    assert scheduler[scheduler.index("--metrics-port") + 1] == "9101"
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/quota.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./ops/grafana/dashboards"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == ENV["GRAFANA_ADMIN_PASSWORD"]
    for service in (prometheus, grafana):  # no login on Prometheus: never on every interface
        assert all(p.startswith("127.0.0.1:") for p in service["ports"])
