"""Hostile input against the HTTP API: Schemathesis from ``/openapi.json``, and a table of
hand-picked attacks that must each get the documented 4xx with a JSON error and change nothing.

Part (a) runs Schemathesis in-process (WSGI: no network) on every operation of the document, in
positive mode (valid data per the schema) and negative mode (data the schema forbids), with a
valid admin or service token, and applies its response checks: no 5xx, every status documented,
the documented content type, the body valid against the documented schema, documented headers,
and negative data rejected with a 4xx. Bounded by ``max_examples``; ``QUOTA_HOSTILE_EXAMPLES``
raises it for a longer hunt.

Part (b) adds what tests/test_api.py does not already cover (it has bad bodies, wrong content
types, 413, bad/expired/forged/tampered tokens per route): ids with braces, colons, newlines,
NUL, unicode and 129 characters, percent-encoded slashes, huge/negative/float/bool/string/NaN
numbers, 1000-level and huge JSON bodies, tokens with unicode, another user's token on every
user route, an expired token on writes; amounts whose exponent overflowed or underflowed Python's
Decimal (``"1e999999999"``, ``"1e-999999999"``); the demo's bounds and its demo-users-only rule;
revocation by anyone but an admin. Each case snapshots every Redis key (type, TTL and content)
before and after: the snapshot must be identical. Paths with ``//`` must never redirect.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from quota._tokens import mint_user_token
from quota_server import create_app
from quota_server.openapi import openapi_document

from .api_support import ADMIN, SERVICE, api_settings, bearer, make_meter, user_token

SYS = "system_deepseek"
EXAMPLES = int(os.environ.get("QUOTA_HOSTILE_EXAMPLES", "200"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def schemathesis_runs() -> list[Any]:
    """(role, method, path, mode) for every operation of the document: both tokens on /v1 routes
    (admin only elsewhere: no token is read there), negative mode only where there is an input
    to make invalid (parameters or a body)."""
    runs = []
    for path, item in openapi_document(demo=True)["paths"].items():
        for method, op in item.items():
            modes = [GenerationMode.POSITIVE]
            if op.get("parameters") or op.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            for role in ["admin", "service"] if path.startswith("/v1/") else ["admin"]:
                for mode in modes:
                    runs.append(
                        pytest.param(
                            role, method.upper(), path, mode, id=f"{role}-{method.upper()} {path}-{mode.value}"
                        )
                    )
    return runs


@pytest.fixture
def app(redis_server, clock):
    redis_server.client().flushall()
    settings = api_settings(QUOTA_DEMO="1")
    meter = make_meter(redis_server.url, clock, settings)
    yield create_app(settings, meter=meter)
    meter.close()


# --- (a) Schemathesis --------------------------------------------------------------------------------


def token_for(path: str, role: str) -> str | None:
    if not path.startswith("/v1/"):
        return None
    return ADMIN if role == "admin" else SERVICE


@pytest.mark.slow
@pytest.mark.parametrize("role, method, path, mode", schemathesis_runs())
def test_schemathesis_finds_no_5xx_and_no_response_off_the_schema(
    app, role: str, method: str, path: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operation = schema[path][method]
    token = token_for(path, role)
    headers = bearer(token) if token else None
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))  # the token is never mutated
    def run(case: Any) -> None:
        response = case.call_and_validate(checks=checks)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    run()
    print(f"\nschemathesis {role} {method} {path} {mode.value}: {sum(statuses.values())} requests, statuses {statuses}")
    assert statuses and not any(s >= 500 for s in statuses), statuses


# --- (b) hand-picked hostile inputs ----------------------------------------------------------------------


def snapshot(client: Any) -> dict[bytes, tuple]:
    """Every key in Redis: its type, its whole content, and whether it has a TTL."""
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"hash":
            content: Any = client.hgetall(key)
        elif kind == b"string":
            content = client.get(key)
        else:
            content = kind
        out[key] = (kind, content, client.pttl(key) > 0)
    return out


@pytest.fixture
def seeded(app, redis_server):
    """The app with some state to damage: alice and bob have usage, a request id and a credit."""
    c = app.test_client()
    for user, rid in (("alice", "seed-a"), ("bob", "seed-b")):
        r = c.post(
            "/v1/usage",
            json={"user": user, "model_id": SYS, "input_tokens": 1000, "output_tokens": 10, "request_id": rid},
            headers=bearer(SERVICE),
        )
        assert r.status_code == 200
    assert c.put("/v1/users/alice/credit", json={"credit": "7.5"}, headers=bearer(ADMIN)).status_code == 200
    raw = redis_server.client()
    assert len(snapshot(raw)) == 4
    yield c, raw
    raw.close()


def rec(**changes: Any) -> dict[str, Any]:
    return {"user": "alice", "model_id": SYS, "input_tokens": 1, "output_tokens": 1, **changes}


def raw_rec(field: str, literal: str) -> str:
    """A usage body whose ``field`` is the JSON text ``literal`` (NaN, 1e400, digits...)."""
    body = json.dumps(rec(**{field: "@@"}))
    return body.replace('"@@"', literal)


def deep(levels: int, leaf: str = "1") -> str:
    return '{"a":' * levels + leaf + "}" * levels


ALICE_EXPIRED = user_token("alice", ttl_s=60, now_s=1_000_000)
LONG = "x" * 129
# (id, method, path, token, request kwargs, status, code). Tokens: "service", "admin", "alice"
# (alice's user token), or a literal Authorization header value starting with "Bearer"/"Basic".
CASES: list[tuple[str, str, str, str, dict[str, Any], int, str]] = [
    # user ids in the path (a write route and a read route each)
    *[
        (f"path-user-{name}-{route}", method, f"/v1/users/{user}/{route}", tok, kw, 400, "invalid_input")
        for name, user in [
            ("braces", "al%7Bice%7D"),
            ("braces-raw", "al{ice}"),
            ("colon", "a:b"),
            ("newline", "a%0Ab"),
            ("nul", "a%00b"),
            ("unicode", "%E7%94%A8%E6%88%B7"),
            ("129-chars", LONG),
            ("space", "a%20b"),
            ("hash-tag", "%7Bbob%7D"),
        ]
        for route, method, tok, kw in [
            ("credit", "put", "admin", {"json": {"credit": 1}}),
            ("token-stats", "get", "service", {}),
        ]
    ],
    (
        "path-user-encoded-slash",
        "put",
        "/v1/users/alice%2Fbob/credit",
        "admin",
        {"json": {"credit": 1}},
        404,
        "not_found",
    ),
    (
        "path-user-encoded-dotdot",
        "put",
        "/v1/users/alice%2F..%2Fbob/credit",
        "admin",
        {"json": {"credit": 1}},
        404,
        "not_found",
    ),
    # user, model and request ids in the body
    *[
        (f"body-{field}-{name}", "post", "/v1/usage", "service", {"json": rec(**{field: value})}, 400, "invalid_input")
        for field, values in [
            (
                "user",
                [
                    ("braces", "al{ice}"),
                    ("colon", "a:b"),
                    ("newline", "alice\n"),
                    ("nul", "ali\x00ce"),
                    ("unicode", "用户"),
                    ("emoji", "a\U0001f600"),
                    ("129-chars", LONG),
                    ("empty", ""),
                    ("slash", "a/b"),
                    ("number", 5),
                    ("null", None),
                ],
            ),
            (
                "model_id",
                [
                    ("braces", "custom_{x}"),
                    ("newline", "custom_x\n"),
                    ("nul", "custom\x00"),
                    ("unicode", "模型"),
                    ("49-chars", "c" * 49),
                    ("empty", ""),
                    ("list", ["x"]),
                ],
            ),
            (
                "request_id",
                [
                    ("braces", "r{1}"),
                    ("newline", "r\n1"),
                    ("unicode", "请求"),
                    ("129-chars", LONG),
                    ("empty", ""),
                    ("number", 7),
                ],
            ),
        ]
        for name, value in values
    ],
    (
        "batch-one-braced-user",
        "post",
        "/v1/usage",
        "service",
        {"json": [rec(request_id="ok-1"), rec(user="bo{b}", request_id="ok-2")]},
        400,
        "invalid_input",
    ),
    # numbers
    *[
        (f"tokens-{name}", "post", "/v1/usage", "service", {"json": rec(**{field: value})}, 400, "invalid_input")
        for name, field, value in [
            ("1e9+1", "input_tokens", 10**9 + 1),
            ("2^63", "input_tokens", 2**63),
            ("2^64", "output_tokens", 2**64),
            ("1e30", "input_tokens", 10**30),
            ("negative", "input_tokens", -1),
            ("negative-out", "output_tokens", -5),
            ("float", "input_tokens", 1.5),
            ("float-whole", "output_tokens", 1000.0),
            ("string", "input_tokens", "5"),
            ("null", "output_tokens", None),
            ("bool", "output_tokens", False),
            ("list", "input_tokens", [1]),
        ]
    ],
    *[
        (
            f"tokens-raw-{name}",
            "post",
            "/v1/usage",
            "service",
            {"data": raw_rec(field, literal), "content_type": "application/json"},
            400,
            "invalid_input",
        )
        for name, field, literal in [
            ("Infinity", "output_tokens", "Infinity"),
            ("-Infinity", "input_tokens", "-Infinity"),
            ("NaN-out", "output_tokens", "NaN"),
            ("-0.0", "input_tokens", "-0.0"),
        ]
    ],
    (
        "tokens-5000-digits",
        "post",
        "/v1/usage",
        "service",
        {"data": raw_rec("input_tokens", "1" * 5000), "content_type": "application/json"},
        400,
        "bad_request",
    ),
    *[
        (
            f"price-{name}",
            "post",
            "/v1/usage",
            "service",
            {"json": rec(model_id="custom_x", price={"cost_per_1k_input": value, "cost_per_1k_output": 1})},
            400,
            "invalid_input",
        )
        for name, value in [
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
            ("negative", -1),
            ("huge", 10**12),
            ("1e400", "1e400"),
            ("bool", True),
            ("null", None),
            ("text", "cheap"),
            # decimal.Overflow (a 500) and a silent underflow to 0, before money.py read digits
            ("1e999999999", "1e999999999"),
            ("1e-999999999", "1e-999999999"),
            ("29-digits", "0.0010000000000000000000000000001"),
        ]
    ],
    *[
        (f"credit-{name}", "put", "/v1/users/alice/credit", "admin", {"json": {"credit": value}}, 400, "invalid_input")
        for name, value in [
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
            ("-Infinity", "-Infinity"),
            ("1e30", 1e30),
            ("2^70", 2**70),
            ("1e999-text", "1e999"),
            ("hex", "0x10"),
            ("object", {"cny": 1}),
            ("negative-text", "-0.5"),
            ("10-decimals", "0.0000000001"),
            ("1e999999999", "1e999999999"),
            ("1e-999999999", "1e-999999999"),
            ("-1e-999999999", "-1e-999999999"),
            ("5000-digits", "9" * 5000),
            ("29-digits", "1.00000000000000000000000000001"),
        ]
    ],
    *[
        (
            f"credit-raw-{name}",
            "put",
            "/v1/users/alice/credit",
            "admin",
            {"data": f'{{"credit": {literal}}}', "content_type": "application/json"},
            400,
            "invalid_input",
        )
        for name, literal in [("NaN", "NaN"), ("Infinity", "Infinity"), ("1e400", "1e400")]
    ],
    *[
        (
            f"month-{name}",
            "put",
            "/v1/users/alice/credit",
            "admin",
            {"json": {"credit": 1, "month": value}},
            400,
            "invalid_input",
        )
        for name, value in [
            ("short", "2026-1"),
            ("newline", "2026-01\n"),
            ("month-13", "2026-13"),
            ("day", "2026-01-01"),
            ("unicode-digits", "٢٠٢٦-٠١"),
            ("number", 202601),
        ]
    ],
    # query parameters
    *[
        (
            f"query-months-{name}",
            "get",
            f"/v1/users/alice/token-stats?months={value}",
            "service",
            {},
            400,
            "invalid_input",
        )
        for name, value in [
            ("superscript", "%C2%B2"),
            ("arabic-digit", "%D9%A3"),
            ("huge", "9" * 40),
            ("float", "1.0"),
            ("negative", "-1"),
            ("nul", "%00"),
            ("space", "%201"),
        ]
    ],
    *[
        (f"query-model-{name}", "get", f"/v1/users/alice/quota?model_id={value}", "service", {}, 400, "invalid_input")
        for name, value in [
            ("newline", "system_deepseek%0A"),
            ("braces", "%7Bx%7D"),
            ("nul", "m%00"),
            ("49-chars", "m" * 49),
        ]
    ],
    # deep and huge bodies
    (
        "deep-1000-object",
        "post",
        "/v1/usage",
        "service",
        {"data": deep(1000), "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "deep-1000-list",
        "post",
        "/v1/usage",
        "service",
        {"data": "[" * 1000 + "]" * 1000, "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "deep-100000-list",
        "post",
        "/v1/usage",
        "service",
        {"data": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "deep-1000-credit",
        "put",
        "/v1/users/alice/credit",
        "admin",
        {"data": deep(1000), "content_type": "application/json"},
        400,
        "bad_request",
    ),
    (
        "deep-100-in-price",
        "post",
        "/v1/usage",
        "service",
        {"data": raw_rec("price", deep(100)), "content_type": "application/json"},
        400,
        "invalid_input",
    ),
    (
        "deep-100-as-tokens",
        "post",
        "/v1/usage",
        "service",
        {"data": raw_rec("input_tokens", deep(100)), "content_type": "application/json"},
        400,
        "invalid_input",
    ),
    ("huge-1001-records", "post", "/v1/usage", "service", {"json": [rec()] * 1001}, 400, "invalid_body"),
    ("huge-900kb-user", "post", "/v1/usage", "service", {"json": rec(user="u" * 900_000)}, 400, "invalid_input"),
    (
        "huge-2mb-body",
        "post",
        "/v1/usage",
        "service",
        {"data": json.dumps([rec()] * 30_000), "content_type": "application/json"},
        413,
        "payload_too_large",
    ),
    (
        "huge-2mb-credit",
        "put",
        "/v1/users/alice/credit",
        "admin",
        {"data": '{"credit": "' + "1" * 2_100_000 + '"}', "content_type": "application/json"},
        413,
        "payload_too_large",
    ),
    (
        "invalid-utf8",
        "post",
        "/v1/usage",
        "service",
        {"data": json.dumps(rec()).encode().replace(b"alice", b"al\xffce"), "content_type": "application/json"},
        400,
        "bad_request",
    ),
    # content types
    *[
        (
            f"content-type-{name}-{route}",
            method,
            path,
            tok,
            {"data": data, "content_type": ctype},
            415,
            "unsupported_media_type",
        )
        for name, ctype, data in [
            ("text-json", "text/json", json.dumps(rec())),
            ("xml", "application/xml", "<usage user='alice'/>"),
            (
                "multipart",
                "multipart/form-data; boundary=x",
                '--x\r\nContent-Disposition: form-data; name="user"\r\n\r\nalice\r\n--x--\r\n',
            ),
            ("octet-stream", "application/octet-stream", json.dumps(rec())),
            ("jsonp", "application/javascript", "cb(" + json.dumps(rec()) + ")"),
        ]
        for route, method, path, tok in [
            ("usage", "post", "/v1/usage", "service"),
            ("credit", "put", "/v1/users/alice/credit", "admin"),
        ]
    ],
    # tokens
    *[
        (f"token-{name}-{route}", method, path, header, kw, 401, code)
        for name, header, code in [
            ("unicode", "Bearer 令牌", "unauthorized"),
            ("latin1", "Bearer ÿÿÿÿ", "unauthorized"),
            ("admin-plus-unicode", f"Bearer {ADMIN}令", "unauthorized"),
            ("user-plus-unicode", f"Bearer {user_token('alice')}令", "unauthorized"),
            ("user-plus-padding", f"Bearer {user_token('alice')}==", "unauthorized"),
            ("10kb", "Bearer " + "A" * 10_000, "unauthorized"),
            (
                "forged-admin-user",
                f"Bearer {mint_user_token('not-our-secret-0123456789', 'alice', 3600)}",
                "unauthorized",
            ),
            ("forged-bob", f"Bearer {mint_user_token('not-our-secret-0123456789', 'bob', 3600)}", "unauthorized"),
            ("expired", f"Bearer {ALICE_EXPIRED}", "token_expired"),
            ("two-tokens", f"Bearer {SERVICE} {ADMIN}", "unauthorized"),
            ("in-query-only", "", "unauthorized"),
        ]
        for route, method, path, kw in [
            ("usage", "post", f"/v1/usage?token={SERVICE}", {"json": rec()}),
            ("credit", "put", f"/v1/users/alice/credit?access_token={ADMIN}", {"json": {"credit": 99}}),
        ]
    ],
    # another user's token, or a weaker role, on every route that writes or reads someone else
    ("alice-token-reads-bob", "get", "/v1/users/bob/token-stats", "alice", {}, 403, "forbidden"),
    ("alice-token-checks-bob", "get", f"/v1/users/bob/quota?model_id={SYS}", "alice", {}, 403, "forbidden"),
    ("alice-token-records-for-alice", "post", "/v1/usage", "alice", {"json": rec()}, 403, "forbidden"),
    (
        "alice-token-sets-own-credit",
        "put",
        "/v1/users/alice/credit",
        "alice",
        {"json": {"credit": 99}},
        403,
        "forbidden",
    ),
    ("alice-token-lists-models", "get", "/v1/models", "alice", {}, 403, "forbidden"),
    ("service-token-sets-credit", "put", "/v1/users/bob/credit", "service", {"json": {"credit": 99}}, 403, "forbidden"),
    ("alice-token-revokes-own-tokens", "post", "/v1/users/alice/tokens/revoke", "alice", {}, 403, "forbidden"),
    ("alice-token-revokes-bob", "post", "/v1/users/bob/tokens/revoke", "alice", {}, 403, "forbidden"),
    ("service-token-revokes", "post", "/v1/users/bob/tokens/revoke", "service", {}, 403, "forbidden"),
    ("no-token-revokes", "post", "/v1/users/bob/tokens/revoke", "", {}, 401, "unauthorized"),
    (
        "expired-token-revokes",
        "post",
        "/v1/users/alice/tokens/revoke",
        f"Bearer {ALICE_EXPIRED}",
        {},
        401,
        "token_expired",
    ),
    *[
        (f"revoke-user-{name}", "post", f"/v1/users/{user}/tokens/revoke", "admin", {}, 400, "invalid_input")
        for name, user in [
            ("braces", "al%7Bice%7D"),
            ("hash-tag", "%7Bbob%7D"),
            ("colon", "a:b"),
            ("nul", "a%00b"),
            ("129-chars", LONG),
        ]
    ],
    (
        "bob-token-with-alice-bad-body",
        "put",
        "/v1/users/alice/credit",
        "bob",
        {"json": {"credit": "NaN"}},
        403,
        "forbidden",
    ),
    # the demo: no token, bounded conversations, demo users only
    *[
        (
            f"demo-{name}",
            "post",
            "/demo/turn",
            "",
            {"json": {"user": "demo-x", "model_id": SYS, "conversation_id": "c", "turn": 1, **body}},
            400,
            code,
        )
        for name, body, code in [
            ("turn-51", {"turn": 51}, "conversation_too_long"),
            ("turn-2^63", {"turn": 2**63}, "conversation_too_long"),
            ("message-2001", {"message": "m" * 2001}, "message_too_long"),
            ("message-900kb", {"message": "m" * 900_000}, "message_too_long"),
            ("real-user", {"user": "alice"}, "invalid_input"),
            ("braced-user", {"user": "demo{alice}"}, "invalid_input"),
        ]
    ],
    *[
        (f"demo-stats-{name}", "get", f"/demo/users/{user}/token-stats", "", {}, 400, "invalid_input")
        for name, user in [("real-user", "alice"), ("braces", "demo%7Balice%7D"), ("129-chars", "demo" + "x" * 125)]
    ],
]


def auth_header(token: str) -> dict[str, str]:
    if token in ("service", "admin", "alice", "bob"):
        value = {"service": SERVICE, "admin": ADMIN}.get(token) or user_token(token)
        return bearer(value)
    return {"Authorization": token} if token else {}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_the_documented_4xx_and_changes_nothing(seeded, case) -> None:
    name, method, path, token, kwargs, status, code = case
    client, raw = seeded
    before = snapshot(raw)
    response = getattr(client, method)(path, headers=auth_header(token), **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert snapshot(raw) == before


# --- paths that start with or contain "//" ------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "//evil.com/x",
        "//evil.com",
        "///evil.com/",
        "//panel",
        "//healthz",
        "/v1//models",
        "//v1/models",
        "/v1/users/alice//quota",
        "/static//evil.com/x",
        "//static/quota.css",
        "/demo//turn",
        "/\\evil.com",
        "/%2F%2Fevil.com",
    ],
)
def test_double_slash_paths_never_redirect_to_another_host(app, path: str) -> None:
    """werkzeug merged slashes with a 308 to an absolute URL built from the Host header
    (``/v1//models`` -> ``http://attacker.example/v1/models``). The raw PATH_INFO is set here:
    the test client would read ``//evil.com/x`` as a host name. (Leading slashes are dropped by
    werkzeug when it matches, so ``//panel`` is the panel: harmless, it links by absolute path.)"""
    response = app.test_client().get("/", headers={"Host": "attacker.example"}, environ_overrides={"PATH_INFO": path})
    assert not 300 <= response.status_code < 400 and "Location" not in response.headers
    if "//" in path.lstrip("/") or "evil" in path:
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
