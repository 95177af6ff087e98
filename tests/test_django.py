"""quota.contrib.django against the harness Redis: Django's test clients, Channels' communicator.

Each test of the issue's findings names it: the credit bypass through the browser's model id, the
Unicode username, the AsyncMeter tied to one event loop, the misspelled option, the panel on the
project's own login. Also the decorator, the signals, the admin, the management commands.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from .django_settings import CUSTOM_MODEL, configure, quota_setting

configure()

import openai  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Permission  # noqa: E402
from django.contrib.staticfiles import finders  # noqa: E402
from django.core.checks import run_checks  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.base import CommandError  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.test.utils import setup_test_environment, teardown_test_environment  # noqa: E402

from examples.channels_chat.consumer import ChatConsumer  # noqa: E402
from examples.stub_llm import StubLLM  # noqa: E402
from quota import ConfigError, InvalidInput, Meter  # noqa: E402
from quota.contrib.django import (  # noqa: E402
    ModelNotAllowed,
    QuotaSettingsError,
    get_async_meter,
    get_meter,
    quota_exceeded,
    quota_user_id,
    resolve_model,
    usage_recorded,
)
from quota.contrib.django.conf import ENV_NAMES, known_keys  # noqa: E402
from quota.contrib.django.staticfiles import PANEL_STATIC_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYS = "system_deepseek"
names = itertools.count(1)


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def django_db():
    """The test database: in-memory SQLite shared by every thread (the async client runs the ORM in
    a worker thread), with the apps' tables made by migrate."""
    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    yield
    connection.creation.destroy_test_db(old_name, verbosity=0)
    teardown_test_environment()


@pytest.fixture
def quota_redis(redis_server):
    """QUOTA pointed at the harness Redis, emptied; the meters are rebuilt from it."""
    redis_server.client().flushall()
    with override_settings(QUOTA=quota_setting(redis_server.url)):
        yield redis_server


def make_user(name: str | None = None, **extra):
    name = name or f"user{next(names)}"
    model = get_user_model()
    model.objects.filter(username=name).delete()
    return model.objects.create_user(username=name, password="pw", **extra)


@pytest.fixture
def signals():
    """What the quota signals carried during the test."""
    got: dict[str, list[dict]] = {"usage": [], "exceeded": []}

    def on_usage(sender, **kwargs):
        got["usage"].append({"sender": sender, **kwargs})

    def on_exceeded(sender, **kwargs):
        got["exceeded"].append({"sender": sender, **kwargs})

    usage_recorded.connect(on_usage)
    quota_exceeded.connect(on_exceeded)
    yield got
    usage_recorded.disconnect(on_usage)
    quota_exceeded.disconnect(on_exceeded)


def clients_connected(redis_server) -> int:
    return len(redis_server.client().client_list()) - 1  # minus the one asking


# --- settings and the system check ----------------------------------------------------------------


def test_the_quota_keys_are_the_librarys_environment_names():
    assert ENV_NAMES["MONTHLY_CREDIT"] == "QUOTA_MONTHLY_CREDIT" and ENV_NAMES["REDIS_URL"] == "REDIS_URL"
    assert {
        "PREFIX",
        "PRICES_FILE",
        "HISTORY_URL",
        "HOLD_TTL_S",
        "TURN_HOLD",
        "MAX_CONNECTIONS",
        "POOL_TIMEOUT_S",
    } <= set(ENV_NAMES)
    assert {"SPOOL", "ON_UNAVAILABLE", "USER_ID", "MODEL_RESOLVER", "CUSTOM_MODELS"} <= set(known_keys())


def test_a_misspelled_option_is_a_clear_error_at_the_check_and_at_first_use(redis_server):
    """Finding 4: QUOTA={"CREDIT": ...} was silently ignored (the credit stayed 5)."""
    with override_settings(QUOTA={"REDIS_URL": redis_server.url, "CREDIT": "20"}):
        [error] = [m for m in run_checks(tags=["quota"]) if m.id.startswith("quota.E")]
        assert error.id == "quota.E001"
        assert "'CREDIT' (did you mean 'MONTHLY_CREDIT'?)" in error.msg
        assert "MONTHLY_CREDIT" in error.msg.split("known keys are")[1]  # the known ones are named
        with pytest.raises(QuotaSettingsError, match="CREDIT") as raised:
            get_meter()
        assert isinstance(raised.value, ImproperlyConfigured) and isinstance(raised.value, ConfigError)


@pytest.mark.parametrize(
    ("quota", "check_id", "says"),
    [
        ({"MONTHLY_CREDIT": "-1"}, "quota.E002", "QUOTA['MONTHLY_CREDIT']"),
        ({"HOLD_TTL_S": "soon"}, "quota.E002", "QUOTA['HOLD_TTL_S'] must be a whole number"),
        ({"MONTHLY_CREDIT": True}, "quota.E002", "must be a string or a number"),
        ({"USER_ID": "nowhere.at_all"}, "quota.E003", "cannot be imported"),
        ({"ON_UNAVAILABLE": "maybe"}, "quota.E005", "on_unavailable must be 'allow' or 'deny'"),
        ({"SPOOL": "/tmp/quota.spool"}, "quota.E005", "/tmp"),  # a directory others can write
    ],
)
def test_bad_values_are_reported_in_the_settings_terms(redis_server, quota, check_id, says):
    with override_settings(QUOTA={"REDIS_URL": redis_server.url, **quota}):
        errors = [m for m in run_checks(tags=["quota"]) if m.id.startswith("quota.E")]
        assert [e.id for e in errors] == [check_id] and says in errors[0].msg
        with pytest.raises(QuotaSettingsError) as raised:  # and the same at first use
            get_meter()
        assert (raised.value.check_id, str(raised.value)) == (check_id, errors[0].msg)


def test_missing_redis_url_and_an_unreachable_redis(tmp_path):
    with override_settings(QUOTA={}):
        assert [m.id for m in run_checks(tags=["quota"])] == ["quota.E004"]
    from quota.testing import free_ports

    closed = free_ports(1, start=19500)[0]
    with override_settings(QUOTA={"REDIS_URL": f"redis://127.0.0.1:{closed}/0"}):
        started = datetime.now()
        [warning] = run_checks(tags=["quota"])
        assert warning.id == "quota.W001" and f"127.0.0.1:{closed}" in warning.msg
        assert (datetime.now() - started).total_seconds() < 3


def test_the_settings_reach_the_meters(redis_server, tmp_path):
    spool = tmp_path / "worker" / "quota.spool"
    quota = {
        "REDIS_URL": redis_server.url,
        "MONTHLY_CREDIT": Decimal("7.5"),
        "PREFIX": "dj",
        "HOLD_TTL_S": 60,
        "TURN_HOLD": "0.2",
        "ON_UNAVAILABLE": "deny",
        "SPOOL": spool,
    }
    with override_settings(QUOTA=quota):
        meter = get_meter()
        assert (meter.settings.credit_nano, meter.settings.prefix, meter.settings.hold_ttl_s) == (
            7_500_000_000,
            "dj",
            60,
        )
        assert meter.settings.turn_hold_nano == 200_000_000 and meter.turn_options.on_unavailable == "deny"
        assert Path(meter.turn_options.spool.path) == spool
        seen = []
        threads = [threading.Thread(target=lambda: seen.append(get_meter())) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(m is meter for m in seen)  # one per process, shared by threads
    with override_settings(QUOTA=quota_setting(redis_server.url)):
        assert get_meter() is not meter and get_meter().settings.credit_nano == 5_000_000_000


# --- finding 3: one AsyncMeter per event loop -----------------------------------------------------


def test_get_async_meter_survives_a_second_asyncio_run_and_closes_with_each_loop(quota_redis):
    async def one_call():
        meter = get_async_meter()
        assert get_async_meter() is meter  # one per loop
        result = await meter.update_token_usage("7", SYS, 1000, 1000)
        return meter, result

    baseline = clients_connected(quota_redis)
    first, r1 = asyncio.run(one_call())
    second, r2 = asyncio.run(one_call())  # "Event loop is closed" before
    assert first is not second and (r1.monthly_used, r2.monthly_used) == (Decimal("0.003"), Decimal("0.006"))
    assert clients_connected(quota_redis) == baseline  # each meter was closed with its loop


def test_get_async_meter_wants_a_running_loop(quota_redis):
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        get_async_meter()


async def test_an_async_view_in_the_async_client(quota_redis, signals):
    user = await sync_to_async(make_user)()
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/chat/async/", {"model_id": SYS, "in": 2000, "out": 500})
    assert response.status_code == 200, response.content
    record = response.json()["record"]
    assert (record["status"], record["result"]["user"], record["result"]["cost"]) == ("counted", str(user.pk), 0.003)
    [usage] = signals["usage"]
    assert (usage["user"], usage["user_id"], usage["model_id"]) == (user, str(user.pk), SYS)
    assert usage["recorded"].status == "counted"


def test_an_async_view_in_the_sync_client_gets_a_new_loop_each_request(quota_redis):
    """Django's sync Client runs an async view with async_to_sync: a new event loop per request."""
    user = make_user()
    client = Client()
    client.force_login(user)
    for n in range(1, 4):
        response = client.get("/chat/async/", {"model_id": SYS})
        assert response.status_code == 200, response.content
        assert response.json()["record"]["result"]["monthly_used"] == pytest.approx(0.003 * n)


# --- the decorator --------------------------------------------------------------------------------


def test_over_the_credit_the_decorator_answers_402_with_the_event(quota_redis, signals):
    user = make_user()
    client = Client()
    client.force_login(user)
    assert client.get("/chat/sync/", {"in": 1000, "out": 1000}).status_code == 200
    get_meter().set_monthly_credit(quota_user_id(user), "0.003")  # used up by that call
    refused = client.get("/chat/sync/")
    assert refused.status_code == 402
    event = refused.json()
    assert (event["type"], event["model_id"], event["monthly_used"], event["monthly_credit"]) == (
        "quota_exceeded",
        SYS,
        0.003,
        0.003,
    )
    [exceeded] = signals["exceeded"]
    assert (exceeded["user"], exceeded["user_id"], exceeded["event"]) == (user, str(user.pk), event)
    assert exceeded["sender"].__name__ == "sync_chat"
    assert len(signals["usage"]) == 1  # the refused view never ran


def test_the_decorator_meters_only_models_the_user_may_use(quota_redis):
    user = make_user()
    client = Client()
    client.force_login(user)
    for asked in ("deepseek-chat", "system_gpt5", "SYSTEM_DEEPSEEK", "", None):
        refused = client.get("/chat/async/", {} if asked is None else {"model_id": asked})
        assert refused.status_code == 400, asked
        assert refused.json()["code"] == "model_not_allowed" and refused.json()["allowed"] == [SYS, CUSTOM_MODEL]
    custom = client.get("/chat/async/", {"model_id": CUSTOM_MODEL})
    assert custom.status_code == 200 and custom.json()["record"]["result"]["is_system"] is False
    stats = get_meter().get_token_stats(str(user.pk))
    assert list(stats["models"]) == [CUSTOM_MODEL]  # nothing else was metered
    assert Client().get("/chat/sync/").status_code == 401


# --- finding 2: Unicode usernames -----------------------------------------------------------------


def test_a_unicode_username_is_metered_by_its_pk(quota_redis):
    with pytest.raises(InvalidInput, match="invalid user id"):
        get_meter().update_token_usage("张三", SYS, 1, 1)  # why the username can't be the id
    user = make_user("张三")
    assert quota_user_id(user) == str(user.pk)
    client = Client()
    client.force_login(user)
    assert client.get("/chat/sync/").status_code == 200
    assert get_meter().get_token_stats(str(user.pk))["models"][SYS]["calls"] == 1
    call_command("quota_credit", "张三", "9")  # the commands find users by username
    assert get_meter().get_token_stats(str(user.pk))["monthly_credit"] == 9


def test_a_user_id_hook(quota_redis):
    user = make_user()
    with override_settings(QUOTA=quota_setting(quota_redis.url, USER_ID=lambda u: f"u-{u.pk}")):
        assert quota_user_id(user) == f"u-{user.pk}"
        with override_settings(QUOTA=quota_setting(quota_redis.url, USER_ID=lambda u: u.pk)):
            with pytest.raises(QuotaSettingsError, match="must return a str"):
                quota_user_id(user)


# --- finding 1: the credit bypass through the browser's model id ----------------------------------


def with_user(app, user):
    async def wrapped(scope, receive, send):
        return await app({**scope, "user": user}, receive, send)

    return wrapped


async def exchange(comm: WebsocketCommunicator, message) -> tuple[list[str], dict]:
    if isinstance(message, dict):
        await comm.send_json_to(message)
    else:
        await comm.send_to(text_data=message) if isinstance(message, str) else await comm.send_to(bytes_data=message)
    deltas = []
    while True:
        event = await comm.receive_json_from(timeout=10)
        if event["type"] != "delta":
            return deltas, event
        deltas.append(event["text"])


@pytest.fixture
async def chat(quota_redis):
    with StubLLM(pieces=["好的，", "an answer."]) as stub:
        llm = openai.AsyncOpenAI(base_url=stub.base_url, api_key="test", max_retries=0)
        yield stub, llm


async def test_an_over_credit_user_cannot_choose_an_unpriced_model(chat, signals):
    stub, llm = chat
    user = await sync_to_async(make_user)()
    await get_async_meter().set_monthly_credit(str(user.pk), "0")  # over the credit
    app = ChatConsumer.as_asgi(llm=llm, custom_llm=llm)  # custom_llm: the user's own endpoint
    comm = WebsocketCommunicator(with_user(app, user), "/ws/chat/")
    assert (await comm.connect())[0]

    for asked in ("deepseek-chat", "gpt-4o", "System_deepseek", "system_gpt5"):
        deltas, event = await exchange(comm, {"type": "message", "text": "hi", "model_id": asked})
        assert (deltas, event["type"], event["code"]) == ([], "error", "model_not_allowed"), asked
        assert event["model_id"] == asked and event["allowed"] == [SYS, CUSTOM_MODEL]
    _, event = await exchange(comm, {"type": "message", "text": "hi", "model_id": SYS})
    assert event["type"] == "quota_exceeded"
    _, event = await exchange(comm, {"type": "message", "text": "hi"})  # the default model: the same
    assert event["type"] == "quota_exceeded"
    assert stub.requests == []  # no LLM call at all
    assert [e["model_id"] for e in signals["exceeded"]] == [SYS, SYS] and signals["usage"] == []

    # bad input keeps the socket open
    for junk in ("not json", b"\x00\x01", {"type": "nonsense"}, {"type": "message", "text": 5}):
        _, event = await exchange(comm, junk)
        assert (event["type"], event["code"]) == ("error", "bad_request")

    # the user's own model is theirs to use: routed to their client, counted, never limited
    deltas, done = await exchange(comm, {"type": "message", "text": "hi", "model_id": CUSTOM_MODEL})
    assert done["type"] == "reply_done" and "".join(deltas) == "好的，an answer." and done["calls"] == ["chat", "name"]
    assert {r["model"] for r in stub.requests} == {CUSTOM_MODEL}
    assert [(u["user_id"], u["model_id"]) for u in signals["usage"]] == [(str(user.pk), CUSTOM_MODEL)] * 2
    stats = await get_async_meter().get_token_stats(str(user.pk))
    assert list(stats["models"]) == [CUSTOM_MODEL] and stats["monthly_used"] == 0
    await comm.disconnect()


async def test_under_the_credit_the_platform_model_is_metered_and_routed_on_the_server(chat):
    stub, llm = chat
    user = await sync_to_async(make_user)()
    comm = WebsocketCommunicator(with_user(ChatConsumer.as_asgi(llm=llm), user), "/ws/chat/")
    assert (await comm.connect())[0]
    _, refused = await exchange(comm, {"type": "message", "text": "hi", "model_id": "deepseek-chat"})
    assert refused["code"] == "model_not_allowed" and stub.requests == []
    deltas, done = await exchange(comm, {"type": "message", "text": "hi"})
    assert done["type"] == "reply_done" and done["monthly_used"] == 0.9  # chat 0.7 + naming 0.2
    assert {r["model"] for r in stub.requests} == {"deepseek-chat"}  # the provider name: server side
    await comm.disconnect()


async def test_a_custom_model_without_a_client_is_refused_without_a_call(chat):
    stub, llm = chat
    user = await sync_to_async(make_user)()
    comm = WebsocketCommunicator(with_user(ChatConsumer.as_asgi(llm=llm), user), "/ws/chat/")
    assert (await comm.connect())[0]
    _, event = await exchange(comm, {"type": "message", "text": "hi", "model_id": CUSTOM_MODEL})
    assert (event["type"], event["code"]) == ("error", "model_unavailable") and stub.requests == []
    await comm.disconnect()


async def test_an_unknown_system_model_from_a_resolver_keeps_the_socket_open(chat, redis_server):
    """A permissive resolver passes "system_gpt5" on: the meter's UnknownModel becomes an event."""
    stub, llm = chat
    user = await sync_to_async(make_user)()
    with override_settings(QUOTA=quota_setting(redis_server.url, MODEL_RESOLVER=lambda u, asked: asked)):
        comm = WebsocketCommunicator(with_user(ChatConsumer.as_asgi(llm=llm), user), "/ws/chat/")
        assert (await comm.connect())[0]
        _, event = await exchange(comm, {"type": "message", "text": "hi", "model_id": "system_gpt5"})
        assert (event["type"], event["code"]) == ("error", "unknown_model") and "system_gpt5" in event["message"]
        _, done = await exchange(comm, {"type": "message", "text": "hi", "model_id": SYS})
        assert done["type"] == "reply_done"  # the same socket, still open
        await comm.disconnect()


def test_the_resolver_hook_decides(quota_redis):
    user = make_user()
    assert resolve_model(user, SYS) == SYS
    with pytest.raises(ModelNotAllowed, match="'deepseek-chat' is not available"):
        resolve_model(user, "deepseek-chat")
    with override_settings(QUOTA=quota_setting(quota_redis.url, MODEL_RESOLVER=lambda u, asked: SYS)):
        assert resolve_model(user, "anything") == SYS  # e.g. one model for everyone


# --- finding 5: the panel on the project's own login ----------------------------------------------


def test_the_panel_is_served_on_the_django_login(quota_redis):
    alice, bob = make_user(), make_user()
    get_meter().update_token_usage(str(alice.pk), SYS, 10_000, 5_000)
    get_meter().update_token_usage(str(bob.pk), SYS, 100_000, 50_000)

    anonymous = Client()
    page = anonymous.get("/quota/panel/")
    assert page.status_code == 302 and page["Location"] == "/accounts/login/?next=/quota/panel/"
    assert anonymous.get("/quota/stats/").status_code == 401
    assert anonymous.get("/quota/stats/").json()["error"]["code"] == "not_authenticated"

    client = Client()
    client.force_login(alice)
    html = client.get("/quota/panel/").content.decode()
    assert 'data-stats-url="/quota/stats/"' in html and f'data-user="{alice.username}"' in html
    assert 'src="/static/quota/panel.js"' in html and 'href="/static/quota/quota.css"' in html
    assert "token=" not in html and "#user=" not in html  # no token in any URL
    mine = client.get("/quota/stats/")
    assert mine["Cache-Control"].startswith("max-age=0") and "no-store" in mine["Cache-Control"]
    assert (mine.json()["user"], mine.json()["monthly_used"]) == (str(alice.pk), 0.02)
    # another user's stats are not reachable: the view takes no user, and nothing else routes there
    assert client.get("/quota/stats/", {"user": str(bob.pk)}).json()["user"] == str(alice.pk)
    assert client.get(f"/quota/stats/{bob.pk}/").status_code == 404
    assert client.get(f"/quota/users/{bob.pk}/token-stats").status_code == 404


def test_the_panel_static_files_are_the_services_own():
    for name in ("panel.js", "i18n.js", "quota.css"):
        assert Path(finders.find(f"quota/{name}")) == PANEL_STATIC_DIR / name == ROOT / "api" / "static" / name
    assert finders.find("quota/demo.js") in (None, [])  # only the panel's files
    assert run_checks(tags=["staticfiles"]) == []
    with override_settings(STATICFILES_FINDERS=["django.contrib.staticfiles.finders.AppDirectoriesFinder"]):
        assert [m.id for m in run_checks(tags=["staticfiles"])] == ["quota.W002"]


def test_the_django_panel_page_has_every_element_panel_js_uses():
    """Both pages, as rendered, carry every element panel.js looks up, in the same markup (one
    source: quota/panel_body.html)."""
    import fakeredis
    from django.template.loader import render_to_string

    from quota_server import create_app

    from .api_support import api_settings

    used = set(re.findall(r'\$\("([\w-]+)"\)', (PANEL_STATIC_DIR / "panel.js").read_text()))
    page = render_to_string("quota/panel.html", {"refresh_s": 30, "stats_url": "/quota/stats/", "who": "u"})
    app = create_app(api_settings(), meter=Meter(fakeredis.FakeRedis(), history=None))
    flask_page = app.test_client().get("/panel").get_data(as_text=True)
    assert used and all(f'id="{i}"' in page and f'id="{i}"' in flask_page for i in used)

    def body(html: str) -> str:
        return re.search(r"<body[^>]*>(.*?)<script", html, re.S).group(1).strip()

    assert "grants" in body(page) and body(page) == body(flask_page)


# --- the admin --------------------------------------------------------------------------------------


def test_the_admin_lists_usage_and_tops_up_credit(quota_redis):
    staff = make_user(is_staff=True, is_superuser=True)
    user = make_user()
    get_meter().update_token_usage(str(user.pk), SYS, 1_000_000, 0)  # 1 CNY
    client = Client()
    client.force_login(staff)
    assert "/admin/quota/usage/" in client.get("/admin/").content.decode()
    listing = client.get("/admin/quota/usage/", {"q": user.username}).content.decode()
    row = re.search(rf'<tr data-user-id="{user.pk}">(.*?)</tr>', listing, re.S).group(1)
    cells = dict(re.findall(r'<td class="(used|credit)">([^<]*)</td>', row))
    assert (Decimal(cells["used"]), Decimal(cells["credit"])) == (1, 5) and "top-up" in row

    form = client.get(f"/admin/quota/usage/{user.pk}/top-up/")
    assert form.status_code == 200
    done = client.post(f"/admin/quota/usage/{user.pk}/top-up/", {"credit": "20"}, follow=True)
    assert re.search(rf"(?i){user.username}: credit for \d{{4}}-\d\d set to 20(\.0)? CNY", done.content.decode())
    assert get_meter().get_token_stats(str(user.pk))["monthly_credit"] == 20
    bad = client.post(f"/admin/quota/usage/{user.pk}/top-up/", {"credit": "-1"})
    assert bad.status_code == 200 and "errorlist" in bad.content.decode()


def test_the_admin_pages_need_their_permissions(quota_redis):
    viewer = make_user(is_staff=True)
    user = make_user()
    client = Client()
    client.force_login(viewer)
    assert client.get("/admin/quota/usage/").status_code == 403
    viewer.user_permissions.add(Permission.objects.get(codename="view_usage"))
    listing = client.get("/admin/quota/usage/")
    assert listing.status_code == 200 and "top-up" not in listing.content.decode()
    assert client.post(f"/admin/quota/usage/{user.pk}/top-up/", {"credit": "99"}).status_code == 403
    assert get_meter().get_token_stats(str(user.pk))["monthly_credit"] == 5


# --- management commands ------------------------------------------------------------------------------


def run(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_quota_stats_and_quota_credit(quota_redis):
    user = make_user()
    credit = json.loads(run("quota_credit", user.username, "12.5"))
    assert (credit["user"], credit["monthly_credit"]) == (str(user.pk), 12.5)
    stats = json.loads(run("quota_stats", str(user.pk), "--id"))
    assert stats["monthly_credit"] == 12.5
    with pytest.raises(CommandError, match="no user with username 'nobody'"):
        run("quota_stats", "nobody")
    with pytest.raises(CommandError, match="must not be negative") as raised:
        run("quota_credit", user.username, "-3")
    assert raised.value.returncode == 2


def test_quota_replay_spool(quota_redis, tmp_path):
    from quota.testing import free_ports

    spool = tmp_path / "worker" / "quota.spool"
    with pytest.raises(CommandError, match="SPOOL"):
        run("quota_replay_spool")
    down = Meter.from_url(f"redis://127.0.0.1:{free_ports(1, start=19600)[0]}/0", spool=spool, history=None)
    with down.turn("42", SYS) as turn:  # Redis away: allowed, spooled
        assert turn.record(input_tokens=1000, output_tokens=1000).status == "spooled"
    down.close()
    with override_settings(QUOTA=quota_setting(quota_redis.url, SPOOL=str(spool))):
        assert run("quota_replay_spool").startswith("replayed 1 record(s)")
        assert get_meter().get_token_stats("42")["monthly_used"] == 0.003


def test_quota_dump_moves_old_months_to_the_history(quota_redis, tmp_path):
    history_url = f"sqlite:///{tmp_path / 'history.db'}"
    now = datetime.now(UTC)
    last_year = datetime(now.year - 1, 3, 10, tzinfo=UTC)
    with override_settings(QUOTA=quota_setting(quota_redis.url, HISTORY_URL=history_url)):
        old = Meter.from_url(quota_redis.url, clock=lambda: last_year, history=None)
        old.update_token_usage("42", SYS, 1000, 1000)
        old.close()
        assert run("quota_dump", "--dry-run").startswith("dry run: would archive 1 user-months")
        assert run("quota_dump").startswith("archived 1 user-months")
        assert quota_redis.client().keys("quota:{42}:????-??") == []  # the month left Redis
        stats = json.loads(run("quota_stats", "42", "--id", "--months", "24"))
        assert stats["history"][f"{last_year.year}-03"][SYS]["calls"] == 1  # read back from SQL
