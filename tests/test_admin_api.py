"""``/v1/admin/months/...`` (issue 13): the month's summary, its users page by page, the CSV export;
admin token only; a past month from the SQL history."""

from __future__ import annotations

import csv
import io

import pytest

from quota import Meter
from quota._report import CSV_HEADER
from quota.history import HistoryStore, dump_expired_months
from quota_server import create_app

from .api_support import ADMIN, SERVICE, api_settings, bearer, make_meter, user_token

SYS, CUS = "system_deepseek", "custom_llama"
PRICE = {"cost_per_1k_input": "0.004", "cost_per_1k_output": "0.008"}


@pytest.fixture
def meter(redis_server, clock):
    redis_server.client().flushall()
    m = make_meter(redis_server.url, clock, api_settings())
    yield m
    m.close()


@pytest.fixture
def client(meter):
    return create_app(api_settings(), meter=meter).test_client()


def fill(meter: Meter, users: int = 25) -> None:
    for i in range(users):
        meter.update_token_usage(f"u{i:02d}", SYS, 100_000 * (i + 1), 1000)
    meter.update_token_usage("u00", CUS, 1000, 1000, price=PRICE)
    meter.update_token_usage("+1555", CUS, 10, 10, price=PRICE)
    meter.set_monthly_credit("u24", "2")


def get(client, path, token=ADMIN):
    return client.get(path, headers=bearer(token))


def test_only_the_admin_token_reads_reports(client):
    for token in (SERVICE, user_token("u00")):
        for path in ("summary", "users", "overview"):
            path = f"/v1/admin/months/2026-01/{path}"
            response = get(client, path, token)
            assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert client.get("/v1/admin/months/2026-01/summary").status_code == 401
    assert get(client, "/v1/admin/months/2026-1/summary").status_code == 400
    assert get(client, "/v1/admin/months/2026-01/users?sort=bogus").status_code == 400
    assert get(client, "/v1/admin/months/2026-01/users?limit=0").status_code == 400
    assert get(client, "/v1/admin/months/2026-01/users?format=xml").status_code == 400


def test_summary_and_pages(client, meter):
    fill(meter)
    summary = get(client, "/v1/admin/months/2026-01/summary").get_json()
    assert summary["users"] == 26 and summary["current"] and summary["sources"] == ["redis"]
    assert summary["users_over_100"] == 1  # u24: 2.5 CNY of a 2 CNY credit
    assert summary["models"][SYS]["users"] == 25 and summary["models"][CUS]["users"] == 2
    seen, cursor = [], None
    while True:
        page = get(client, "/v1/admin/months/2026-01/users?limit=7" + (f"&cursor={cursor}" if cursor else ""))
        body = page.get_json()
        assert page.headers["Cache-Control"] == "no-store" and body["total_users"] == 26
        seen += body["users"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert [u["user"] for u in seen][:3] == ["u24", "u23", "u22"] and len(seen) == 26
    assert seen[0]["exceeded"] and seen[0]["credit_set"] and seen[0]["monthly_credit"] == 2
    by_user = get(client, "/v1/admin/months/2026-01/users?sort=user&limit=2").get_json()["users"]
    assert [u["user"] for u in by_user] == ["+1555", "u00"]
    overview = get(client, "/v1/admin/months/2026-01/overview?top=3").get_json()
    assert overview["summary"] == summary | {"computed_at": overview["summary"]["computed_at"]}
    assert [u["user"] for u in overview["top"]] == ["u24", "u23", "u22"]
    assert [u["user"] for u in overview["near"]] == ["u24"]  # 2.5 of 2 CNY; u23 is at 48 %


def test_csv_export_one_row_per_user_and_model(client, meter):
    fill(meter)
    response = get(client, "/v1/admin/months/2026-01/users?format=csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == 'attachment; filename="quota-2026-01.csv"'
    assert response.is_streamed
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert tuple(rows[0]) == CSV_HEADER
    body = rows[1:]
    assert len(body) == 27  # 25 users on SYS, u00 also on CUS, +1555 on CUS
    assert {(r[1], r[2]) for r in body} >= {("u00", SYS), ("u00", CUS), ("'+1555", CUS)}
    u24 = next(r for r in body if r[1] == "u24")
    assert u24[3] == "true" and u24[10] == "2" and float(u24[11]) > 100


def test_an_empty_month_is_a_header_and_nothing_else(client):
    response = get(client, "/v1/admin/months/2025-06/users?format=csv")
    assert response.get_data(as_text=True).strip() == ",".join(CSV_HEADER)
    assert get(client, "/v1/admin/months/2025-06/summary").get_json()["users"] == 0


def test_a_past_month_comes_from_the_history(redis_server, clock, tmp_path):
    redis_server.client().flushall()
    store = HistoryStore(f"sqlite:///{tmp_path}/h.db", prefix="apitest")
    meter = Meter.from_url(redis_server.url, clock=clock, prefix="apitest", history=store)
    try:
        clock.set(2025, 12, 5)
        fill(meter, users=5)
        clock.set(2026, 1, 3)
        assert dump_expired_months(meter, store).archived == 7
        client = create_app(api_settings(), meter=meter).test_client()
        summary = get(client, "/v1/admin/months/2025-12/summary").get_json()
        assert summary["users"] == 7 and summary["sources"] == ["redis", "sql"] and not summary["current"]
        rows = list(csv.reader(io.StringIO(get(client, "/v1/admin/months/2025-12/users?format=csv").get_data(True))))
        assert len(rows) == 1 + 8
    finally:
        meter.close()
        store.close()


def test_redis_away_is_a_503_before_any_csv_is_sent(redis_server, clock):
    settings = api_settings()
    meter = Meter.from_url("redis://127.0.0.1:1/0", settings=settings.quota, clock=clock, history=None)
    client = create_app(settings, meter=meter).test_client()
    response = get(client, "/v1/admin/months/2026-01/users?format=csv")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "storage_unavailable"
    assert get(client, "/v1/admin/months/2026-01/summary").status_code == 503
    meter.close()
