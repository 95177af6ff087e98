"""The Grafana dashboard and the Prometheus alert rules in ops/ name only metrics that the service
(the API's /metrics) or the scheduler (``quota scheduler --metrics-port``) exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quota.history.dump import DumpReport
from quota.history.metrics import DumpMetrics
from quota_server import create_app

from .api_support import SERVICE, api_settings, bearer

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "quota.json"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # made by Prometheus itself for every target


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers followed by a selector, a range, or
    an operator, less the functions and keywords."""
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r'"[^"]*"', '""', expr)))
    functions = {w for w in words if re.search(rf"\b{w}\s*\(", expr)}
    keywords = {"by", "without", "on", "ignoring", "and", "or", "unless", "le", "bool", "group_left", "group_right"}
    labels = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*=~?", expr)) | set(
        w for part in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr) for w in re.findall(r"\w+", part)
    )
    return {
        w for w in words - functions - keywords - labels if w.startswith(("quota_", "process_")) or w in PROMETHEUS_OWN
    }


def exported() -> set[str]:
    """Every sample name the API and the scheduler expose, with the family names."""
    settings = api_settings()
    import fakeredis

    from quota import Meter

    meter = Meter(fakeredis.FakeRedis(), settings=settings.quota)
    client = create_app(settings, meter=meter).test_client()
    client.post(
        "/v1/usage",
        json={"user": "a", "model_id": "system_deepseek", "input_tokens": 1, "output_tokens": 1},
        headers=bearer(SERVICE),
    )
    client.get("/v1/users/a/quota?model_id=system_deepseek", headers=bearer(SERVICE))
    texts = [client.get("/metrics").get_data(as_text=True)]
    dump = DumpMetrics()
    dump.observe(lambda: DumpReport(before="2026-01", archived=3))()
    texts.append(generate_latest(dump.registry).decode())
    names = set()
    for text in texts:
        for family in text_string_to_metric_families(text):
            names.add(family.name)
            names.update(s.name for s in family.samples)
    return names


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_the_metric_name_reader():
    assert metric_names('sum by (kind) (rate(quota_usage_records_total{duplicate="false"}[5m]))') == {
        "quota_usage_records_total"
    }
    assert metric_names("time() - quota_dump_last_success_timestamp_seconds > 36 * 3600") == {
        "quota_dump_last_success_timestamp_seconds"
    }
    assert metric_names('up{job="quota-api"} == 0') == {"up"}
    assert "quota_nope_total" not in exported()  # a drift would be caught


@pytest.mark.parametrize("where", ["dashboard", "alerts"])
def test_every_metric_named_is_exported(where):
    exprs = dashboard_exprs() if where == "dashboard" else alert_exprs()
    assert exprs
    named = set().union(*(metric_names(e) for e in exprs)) - PROMETHEUS_OWN
    missing = {n for n in named if n not in exported()}
    assert not missing, f"{where} names metrics nobody exports: {sorted(missing)}"


def test_the_dashboard_covers_what_operators_watch():
    text = " ".join(dashboard_exprs())
    for metric in (
        "quota_usage_records_total",  # records/s
        "quota_usage_cost_cny_total",  # spend rate
        "quota_checks_total",  # checks denied
        "quota_dump_last_success_timestamp_seconds",  # dump lag
        "quota_storage_errors_total",
        "quota_history_errors_total",
    ):
        assert metric in text, metric
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert {p["datasource"]["uid"] for p in board["panels"]} == {"quota-prometheus"}
    source = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["uid"] == "quota-prometheus"
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_alert_rules_cover_a_stale_dump_and_storage_errors():
    rules = {r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]}
    assert {"QuotaDumpStale", "QuotaStorageErrors", "QuotaHistoryErrors"} <= set(rules)
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]


def test_the_scheduler_counts_its_runs():
    metrics = DumpMetrics()
    job = metrics.observe(lambda: DumpReport(before="2026-01", archived=5, seconds=1.5))
    assert job().startswith("archived 5 user-months")

    def failing():
        raise RuntimeError("redis away")

    with pytest.raises(RuntimeError):
        metrics.observe(failing)()
    values = {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
    }
    assert values["quota_dump_runs_total[('outcome', 'ok')]"] == 1
    assert values["quota_dump_runs_total[('outcome', 'failed')]"] == 1
    assert values["quota_dump_archived_user_months_total[]"] == 5
    assert values["quota_dump_last_success_timestamp_seconds[]"] > 0
