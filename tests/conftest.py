"""Shared fixtures. Every test runs on the builtin model with no pauses, and no test reaches a real
model over the network: only loopback servers that a test starts itself may be called."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Iterator

import httpx2
import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.conf import settings as django_settings

from chat import consumers, llm, toolbox
from chat.sockets import tasks_stop
from tests.support.browser import chat_server_fixture, live_daphne_fixture  # noqa: F401 - fixtures
from tests.support.models import ScriptedModel
from tests.support.seed import seed_demo


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """The test database: a SQLite *file* of this test process (a daphne the browser tests start must see
    the test data; two runs in one checkout never share it), or ``DATABASE_TEST_NAME`` (two runs sharing
    one PostgreSQL server)."""
    test = django_settings.DATABASES["default"].setdefault("TEST", {})
    if os.environ.get("DATABASE_TEST_NAME"):
        test["NAME"] = os.environ["DATABASE_TEST_NAME"]
    elif django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        test["NAME"] = str(django_settings.BASE_DIR / f".test-db-{os.getpid()}.sqlite3")


@pytest.fixture(scope="session", autouse=True)
def _no_connection_left_on_the_orms_async_thread(django_db_setup: None) -> Iterator[None]:
    """Async tests that use the ORM directly (``aexists``, ``async for``) run it on asgiref's one
    thread-sensitive thread, whose connection no request ends: closed before the test database is dropped
    (on PostgreSQL an open one makes the drop fail, a warning at the end of the run)."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)


@pytest.fixture(autouse=True)
def _builtin_model_without_pauses(settings):
    settings.CHAT_BACKEND = "builtin"
    settings.CHAT_MODEL = "builtin-support-1"
    settings.CHAT_BUILTIN_DELAY_MS = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
    llm.configured_chat_model.cache_clear()
    toolbox.get_toolbox.cache_clear()
    yield
    llm.configured_chat_model.cache_clear()


@pytest.fixture(autouse=True)
def _no_network_models(monkeypatch):
    real = httpx2.AsyncHTTPTransport.handle_async_request

    async def loopback_only(self, request):
        if request.url.host not in {"127.0.0.1", "localhost", "::1"}:
            raise AssertionError(f"a test tried to reach {request.url.host}: tests never call real models")
        return await real(self, request)

    monkeypatch.setattr(httpx2.AsyncHTTPTransport, "handle_async_request", loopback_only)


@pytest.fixture
def chat_model() -> Iterator[ScriptedModel]:
    """The model every turn of the test uses: answers as the builtin model until scripted
    (``chat_model.queue(...)`` / ``.script(...)``), counts and records its calls, can be held."""
    with llm.chat_model_override(ScriptedModel(inner=llm.configured_chat_model())) as model:
        yield model


@pytest.fixture
def runtime_on_test_connection(monkeypatch):
    """Lets sync test code drive the runtime (``run_conversation``) on the test's connection, inside its
    transaction: ``database_sync_to_async`` closes "old" connections around each call, which would close
    the one a non-transactional test runs in; called from sync code, it runs in this thread."""
    monkeypatch.setattr("chat.db.close_old_connections", lambda: None)  # the runtime's crossings
    monkeypatch.setattr("channels.db.close_old_connections", lambda: None)  # the test helpers' own


@pytest.fixture
def demo_data(db):
    """The contract's demo data: john_doe/key (12345 Open, 67890 Closed), jane_roe/jane-key (24680)."""
    seed_demo("demo-password-1")


@pytest.fixture(autouse=True)
def _channel_layer_of_the_tests_own():
    """Every test builds its channel layer afresh: the Redis layer keeps receive state (locks, buffers,
    pools) per event loop, and each test runs on a loop of its own. A layer carried over from an earlier
    test's loop once left a refused consumer's receive uncancellable, hanging the loop's close."""
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def _awaiting(task: asyncio.Task) -> str:
    """Where a task waits: its chain of awaited coroutines, innermost last."""
    where, coro = [], task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        where.append(f"{coro.cr_frame.f_code.co_filename}:{coro.cr_frame.f_lineno} {coro.cr_code.co_name}")
        coro = coro.cr_await
    return "\n    ".join(where)


@pytest.fixture
async def _leftover_tasks_stopped():
    """What an async test leaves running (sockets it never closed) is stopped before its loop closes, by
    cancelling until it ends (``chat.sockets.tasks_stop``): a lost cancellation fails this test, with
    where the task waits, instead of hanging the loop's close and the whole run."""
    yield
    left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    try:
        async with asyncio.timeout(15):
            await tasks_stop(left)
    except TimeoutError:
        stuck = "\n".join(f"{task!r}\n    {_awaiting(task)}" for task in left if not task.done())
        pytest.fail(f"tasks that would not stop:\n{stuck}")


@pytest.fixture(autouse=True)
def _no_task_outlives_its_test(request):
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_leftover_tasks_stopped")


@pytest.fixture
async def no_turn_left_running():
    """For socket tests: a channel layer of the test's own event loop (the Redis layer must not outlive
    its loop), and no turn may still be running when the test is over."""
    channel_layers.backends.clear()
    yield
    if consumers.running_turns:
        await asyncio.wait(list(consumers.running_turns), timeout=10)
    assert not consumers.running_turns, "a turn was still running after the test"
    layer = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
