"""docker-compose.yml parses and wires Redis (AOF on), PostgreSQL, the API and the scheduler."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import yaml

from quota.scheduler import parse_at

ROOT = Path(__file__).resolve().parent.parent


def load() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_names_the_four_services() -> None:
    services = load()["services"]
    assert {"redis", "postgres", "api", "scheduler"} <= set(services)


def test_redis_keeps_an_append_only_file_on_a_volume() -> None:
    redis = load()["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_api_and_scheduler_run_quota_and_find_redis_and_postgres() -> None:
    compose = load()
    services = compose["services"]
    assert services["api"]["command"][:2] == ["quota", "serve"]
    scheduler = services["scheduler"]["command"]
    assert scheduler[:2] == ["quota", "scheduler"]
    parse_at(scheduler[scheduler.index("--at") + 1])  # a valid HH:MM
    pg = services["postgres"]["environment"]
    for name in ("api", "scheduler"):
        env = services[name]["environment"]
        assert urlsplit(env["REDIS_URL"]).hostname == "redis"
        history = urlsplit(env["QUOTA_HISTORY_URL"])
        assert history.scheme == "postgresql" and history.hostname == "postgres"
        assert history.username == pg["POSTGRES_USER"] and history.path == "/" + pg["POSTGRES_DB"]
        assert set(services[name]["depends_on"]) == {"redis", "postgres"}
        assert services[name]["build"] == "."
    assert (ROOT / "Dockerfile").read_text().count("pip install .") == 1
