"""The example project (examples/django_site) under a real daphne server, over real sockets.

The site runs as a plain install would run it: a subprocess whose path holds only ``quota`` and
``quota_server`` (no ``examples`` package, no test code), with its own SQLite database, the harness Redis
and a loopback stub LLM. Its management commands make the user (a Unicode username) and set the
credit; the test logs in through Django's login form, reads the panel's stats with the session
cookie, and chats over a WebSocket with a minimal RFC 6455 client (the ``websockets`` package is
not installed, and Channels' communicator would not be a real socket).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from examples.stub_llm import StubLLM
from quota.testing import free_ports

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "django_site"
USER, PASSWORD = "张三", "pw-for-张三"


@dataclass
class Site:
    port: int
    env: dict[str, str]
    stub: StubLLM

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=SITE, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def request(
        self,
        method: str,
        path: str,
        *,
        cookies: dict[str, str] | None = None,
        form: dict | None = None,
    ) -> tuple[int, dict[str, str], str, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        set_cookies = {}
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                set_cookies[key] = rest.split(";", 1)[0]
        conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, text, set_cookies


@pytest.fixture(scope="module")
def site(redis_server, tmp_path_factory):
    redis_server.client().flushall()
    tmp = tmp_path_factory.mktemp("django-site")
    path_dir = tmp / "path"  # what a plain install puts on the path: quota and quota_server only
    path_dir.mkdir()
    for package, folder in (("quota", "quota"), ("quota_server", "api")):
        (path_dir / package).symlink_to(ROOT / folder)
    port = free_ports(1, start=21000)[0]
    with StubLLM(pieces=["你好，", "daphne."]) as stub:
        env = {
            **os.environ,
            "PYTHONPATH": str(path_dir),
            "REDIS_URL": redis_server.url,
            "EXAMPLE_DB": str(tmp / "site.db"),
            "LLM_BASE_URL": stub.base_url,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        site = Site(port, env, stub)
        site.manage("migrate", "--noinput")
        site.manage("createsuperuser", "--noinput", "--username", USER, "--email", "zhang@example.com")
        log = open(tmp / "daphne.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "site_config.asgi:application"],
            cwd=SITE,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert proc.poll() is None, (tmp / "daphne.log").read_text()
                    assert time.monotonic() < deadline, "daphne did not start"
                    time.sleep(0.1)
            yield site
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()


def log_in(site: Site) -> dict[str, str]:
    status, _, page, cookies = site.request("GET", "/accounts/login/")
    assert status == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    status, headers, _, more = site.request(
        "POST",
        "/accounts/login/",
        cookies=cookies,
        form={"username": USER, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/quota/panel/"},
    )
    assert status == 302 and headers["location"] == "/quota/panel/", status
    return {**cookies, **more}


# --- a minimal WebSocket client (RFC 6455): text frames, masked, one message per frame -----------------


class WebSocket:
    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port: int, path: str, cookies: dict[str, str]):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nCookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        lines = head.decode("latin1").split("\r\n")
        assert lines[0].split()[1] == "101", lines[0]
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        headers = {
            name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])
        }
        assert headers.get("sec-websocket-accept") == accept

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_json(self, data: dict) -> None:
        self.send(json.dumps(data).encode())

    def receive_json(self) -> dict:
        while True:
            first, second = self._exact(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = first & 0x0F
            if opcode == 0x1:
                return json.loads(payload)
            assert opcode != 0x8, f"closed by the server: {payload!r}"
            if opcode == 0x9:
                self.send(payload, opcode=0xA)  # pong

    def exchange(self, data: dict) -> tuple[str, dict]:
        self.send_json(data)
        text = ""
        while (event := self.receive_json())["type"] == "delta":
            text += event["text"]
        return text, event

    def close(self) -> None:
        self.send(struct.pack(">H", 1000), opcode=0x8)
        self.sock.close()


def test_the_example_site_under_daphne(site):
    cookies = log_in(site)

    # the panel on the site's own login: the page, then the user's own stats with the session cookie
    status, _, page, _ = site.request("GET", "/quota/panel/", cookies=cookies)
    assert status == 200 and 'data-stats-url="/quota/stats/"' in page and f'data-user="{USER}"' in page
    status, _, _, _ = site.request("GET", "/quota/panel/")
    assert status == 302  # anonymous: to the login
    status, _, body, _ = site.request("GET", "/static/quota/panel.js", cookies=cookies)
    assert status == 200 and "dataset.statsUrl" in body  # the service's panel.js
    status, _, body, _ = site.request("GET", "/quota/stats/", cookies=cookies)
    stats = json.loads(body)
    user_id = stats["user"]
    assert status == 200 and user_id.isdigit() and stats["monthly_used"] == 0  # 张三 is metered as str(pk)

    ws = WebSocket(site.port, "/ws/chat/", cookies)
    text, done = ws.exchange({"type": "message", "text": "你好"})
    assert (text, done["type"], done["calls"], done["monthly_used"]) == (
        "你好，daphne.",
        "reply_done",
        ["chat", "name"],
        0.9,
    )
    calls = len(site.stub.requests)

    # over the credit (set with the site's own command): nothing gets through, the socket stays open
    assert json.loads(site.manage("quota_credit", USER, "0.5"))["monthly_credit"] == 0.5
    for asked in ("deepseek-chat", "system_gpt5"):
        _, event = ws.exchange({"type": "message", "text": "free?", "model_id": asked})
        assert (event["type"], event["code"]) == ("error", "model_not_allowed")
    _, event = ws.exchange({"type": "message", "text": "more", "model_id": "system_deepseek"})
    assert event["type"] == "quota_exceeded" and event["monthly_used"] == 0.9
    ws.send(b"not json")
    assert ws.receive_json()["code"] == "bad_request"
    assert len(site.stub.requests) == calls  # no LLM call since

    # a top-up, and the next message goes through on the same socket
    site.manage("quota_credit", user_id, "5", "--id")
    _, done = ws.exchange({"type": "message", "text": "again"})
    assert done["type"] == "reply_done" and done["monthly_used"] == 1.6
    ws.close()

    status, _, body, _ = site.request("GET", "/quota/stats/", cookies=cookies)
    assert json.loads(body)["monthly_used"] == 1.6
    assert json.loads(site.manage("quota_stats", USER))["models"]["system_deepseek"]["calls"] == 3
    check = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=SITE, env=site.env, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "no issues" in check.stdout, check.stdout + check.stderr


CHROMIUM = os.environ.get("QUOTA_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")
def test_the_panel_renders_in_a_browser_on_the_session(site):
    playwright_api = pytest.importorskip("playwright.sync_api")
    cookies = log_in(site)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": k, "value": v, "url": f"http://127.0.0.1:{site.port}"} for k, v in cookies.items()]
            )
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{site.port}/quota/panel/")
            page.wait_for_selector("body[data-loaded]", timeout=10_000)
            assert page.text_content("#who") == USER
            assert page.get_attribute("#credit", "data-value") is not None
            assert page.is_hidden("#alert")
        finally:
            browser.close()
