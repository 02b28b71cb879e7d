"""A real daphne serving the site to a real browser, on the database pytest-django made for the tests.

Fixtures (registered by tests/conftest.py):
``live_daphne`` (module scope) starts ``daphne supportsite.asgi:application`` once per module, in a
subprocess whose environment is the test process's plus ``DATABASE_URL`` naming the test database,
so the server reads and writes exactly what the tests see (the same Redis too, when ``REDIS_URL`` is
set). ``chat_server`` (function scope) hands that server to a test with the demo data committed:
``transactional_db`` commits for real and flushes every table after each test, so it seeds per test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection
from playwright.sync_api import Browser, sync_playwright
from pytest_django import DjangoDbBlocker, Settings

from tests.support.seed import STAFF_PASSWORD, seed_demo

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_TIMEOUT_SECONDS = 15.0


class ChatServer:
    """One daphne subprocess on a fixed loopback port; ``stop`` and ``start`` again to drop every socket."""

    def __init__(self, *, port: int, environment: dict[str, str], log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"  # no trailing slash
        self.environment = environment
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start daphne and return once it accepts connections (or raise, with the end of its log)."""
        daphne = shutil.which("daphne", path=str(Path(sys.executable).parent)) or "daphne"
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [daphne, "-b", "127.0.0.1", "-p", str(self.port), "supportsite.asgi:application"],
                cwd=settings.BASE_DIR,
                env=self.environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process, self.log)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def require_chromium() -> str:
    """The Chromium to drive; skips the test without one, but fails under CI=true (it must run there)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing (`make test` installs Debian's chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright. Launch it after the test's data is in: the sync Playwright
    API keeps an event loop marked as running in this thread, and Django then refuses ORM work."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def database_url() -> str:
    """A ``DATABASE_URL`` for the database this test process is using (the test one, once set up)."""
    db = connection.settings_dict
    if db["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(db['NAME']).resolve()}"  # absolute path: sqlite:////abs/path
    if db["ENGINE"] == "django.db.backends.postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db.get("PASSWORD"):
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "127.0.0.1"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"the browser tests don't know how to share a {db['ENGINE']} database")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling a port: there is nothing to wait on instead
    raise RuntimeError(f"daphne did not listen on {port} within {STARTUP_TIMEOUT_SECONDS}s:\n{log.read_text()[-4000:]}")


def daphne_environment() -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if key not in {"DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    environment.update(
        DATABASE_URL=database_url(),
        CHAT_BACKEND="builtin",
        CHAT_BUILTIN_DELAY_MS="5",  # streams visibly, yet a whole conversation takes about a second
        DJANGO_DEBUG="1",
        # The settings the tests run with (pytest-django exports --ds / the ini value here).
        DJANGO_SETTINGS_MODULE=os.environ.get("DJANGO_SETTINGS_MODULE", "supportsite.settings"),
        PYTHONUNBUFFERED="1",
    )
    # Browsers send Origin 127.0.0.1:<port>; the default ALLOWED_HOSTS admits it, a CI override may not.
    environment.pop("DJANGO_ALLOWED_HOSTS", None)
    return environment


@pytest.fixture(scope="module", name="live_daphne")
def live_daphne_fixture(django_db_setup: None, django_db_blocker: DjangoDbBlocker) -> Iterator[ChatServer]:
    """daphne on a free loopback port, serving the test database; terminated after the module."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    log = ARTIFACTS / f"browser-daphne-{port}.log"  # per port: other suites may run at the same time
    log.write_bytes(b"")
    with django_db_blocker.unblock():  # reads connection settings only; the server makes the queries
        environment = daphne_environment()
    server = ChatServer(port=port, environment=environment, log=log)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    log.unlink(missing_ok=True)  # kept only when a test failed in the module's fixtures


def server_logins(*usernames: str) -> None:
    """Let these demo users log in on the server with ``STAFF_PASSWORD``: the test process hashes with MD5
    for speed, and the server accepts only its default hasher (PBKDF2). Call before the browser starts."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher
    from django.contrib.auth.models import User

    hasher = PBKDF2PasswordHasher()
    for username in usernames:
        User.objects.filter(username=username).update(password=hasher.encode(STAFF_PASSWORD, hasher.salt()))


@pytest.fixture(name="chat_server")
def chat_server_fixture(live_daphne: ChatServer, transactional_db: None, settings: Settings) -> ChatServer:
    """The live server (running) with the contract's demo data committed, visible to the server process.

    The staff accounts' passwords are hashed with MD5 here, for speed (PBKDF2 costs about a second per
    test); the server accepts only its default hashers, so a test that logs in as staff on the server
    calls ``server_logins`` first.
    """
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    if live_daphne.process is None:  # a test stopped it and failed before starting it again
        live_daphne.start()
    seed_demo(STAFF_PASSWORD)
    return live_daphne
