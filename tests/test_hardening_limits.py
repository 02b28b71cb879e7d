"""The flood limits' own soundness: a frame that breaks the JSON decoder is a refusal like any other; a
socket's lease comes back however the socket ends (closed, crashed, its process killed); counters are
exact over their whole window and across concurrent processes, on the database and on Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.conf import settings as django_settings

from chat import counters, limits
from chat.protocol import CustomerError
from tests.support.browser import database_url
from tests.support.sockets import TIMEOUT, an_address, attached, new_session_key, of_type, say

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]

NESTED = "[" * 100_000 + "]" * 100_000


def run_in_another_process(code: str) -> str:
    """``code`` run by a fresh Python process on this test's database (and Redis, when configured)."""
    environment = os.environ | {"DATABASE_URL": database_url()}
    environment.pop("DATABASE_TEST_NAME", None)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=django_settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ONE KIND OF FRAME


async def test_a_deeply_nested_frame_is_refused_and_the_socket_lives_on():
    communicator = await attached(await new_session_key())
    await communicator.send_to(text_data=NESTED)
    refusal = await communicator.receive_json_from(timeout=TIMEOUT)
    assert refusal["code"] == "bad_frame" and refusal["refused"] is True
    assert await communicator.receive_json_from(timeout=TIMEOUT) == {"type": "idle"}
    assert not of_type(await say(communicator, "still here?"), "error")
    await communicator.disconnect()


async def test_nested_frames_from_one_address_never_lock_it_out(settings):
    settings.CHAT_SOCKETS_PER_ADDRESS = 3
    address = an_address()
    for _ in range(10):
        communicator = await attached(None, address=address)
        await communicator.send_to(text_data=NESTED)
        assert (await communicator.receive_json_from(timeout=TIMEOUT))["code"] == "bad_frame"
        await communicator.disconnect()
    customer = await attached(None, address=address)
    assert not of_type(await say(customer, "hello"), "error")
    await customer.disconnect()


async def test_a_socket_whose_handler_crashes_gives_its_lease_back(monkeypatch, settings):
    settings.CHAT_SOCKETS_PER_ADDRESS = 1
    address = an_address()

    def crash(text: str | None) -> None:
        raise RuntimeError("a bug we have not found yet")

    communicator = await attached(None, address=address)
    monkeypatch.setattr("chat.consumers.parse_client_frame", crash)
    await communicator.send_to(text_data='{"type": "message", "text": "hi"}')
    await asyncio.wait([communicator.future], timeout=TIMEOUT)  # the consumer ends at once, crashed
    with pytest.raises(RuntimeError):
        communicator.future.result()
    monkeypatch.undo()
    await (await attached(None, address=address)).disconnect()  # the crashed socket counts no more


def test_the_sockets_of_a_killed_process_stop_counting_when_their_leases_expire(settings, monkeypatch):
    settings.CHAT_SOCKETS_PER_ADDRESS = 3  # the other process takes its default (200), never refused
    address = an_address()
    run_in_another_process(
        "import os\nfrom chat import limits\n"
        f"for n in range(3): limits.socket_open(session_key=f'killed-{{n}}', client_address={address!r})\n"
        "os._exit(0)  # killed: no socket_close, no more renewals"
    )
    with pytest.raises(CustomerError):
        limits.socket_open(session_key="s", client_address=address)
    later = counters.now() + counters.LEASE_SECONDS + 1
    monkeypatch.setattr(counters, "now", lambda: later)
    lease = limits.socket_open(session_key="s", client_address=address)
    limits.socket_close(lease=lease, session_key="s", client_address=address)


def test_a_live_process_renews_the_leases_of_its_open_sockets(settings, monkeypatch):
    settings.CHAT_SOCKETS_PER_ADDRESS = 1
    address, start = an_address(), counters.now()
    lease = limits.socket_open(session_key="open", client_address=address)
    monkeypatch.setattr(counters, "now", lambda: start + counters.LEASE_SECONDS - 1)
    counters.keeper.renew()
    monkeypatch.setattr(counters, "now", lambda: start + counters.LEASE_SECONDS + 10)
    with pytest.raises(CustomerError):
        limits.socket_open(session_key="another", client_address=address)
    limits.socket_close(lease=lease, session_key="open", client_address=address)
    limits.socket_close(lease=limits.socket_open(session_key="another", client_address=address),
                        session_key="another", client_address=address)


def test_a_deeply_nested_feedback_body_is_a_400(client):
    response = client.post("/feedback/", NESTED, content_type="application/json")
    assert response.status_code == 400 and response.json()["ok"] is False


# EXACT COUNTERS


def test_the_hourly_counter_still_counts_after_a_six_minute_gap(settings):
    settings.CHAT_CONVERSATIONS_PER_HOUR = 3
    session_key = uuid.uuid4().hex
    start = datetime(2031, 5, 6, 10, 0, 5, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as traveller:
        for _ in range(3):
            limits.conversation_start_admit(session_key=session_key, client_address=None)
        traveller.move_to(start + timedelta(minutes=6))
        with pytest.raises(CustomerError):
            limits.conversation_start_admit(session_key=session_key, client_address=None)
        traveller.move_to(start + timedelta(minutes=59, seconds=50))
        with pytest.raises(CustomerError):
            limits.conversation_start_admit(session_key=session_key, client_address=None)
        traveller.move_to(start + timedelta(hours=1))
        limits.conversation_start_admit(session_key=session_key, client_address=None)  # a new hour


def test_600_new_conversations_from_one_address_in_four_processes_admit_exactly_500():
    """Four processes at once, 150 new conversations each, each from its own session: the default
    per-address limit is 500 an hour, and the counters must neither lose nor double an event."""
    address = an_address()
    code = (
        "import sys, uuid\nfrom chat import limits\nfrom chat.protocol import CustomerError\nadmitted = 0\n"
        "for n in range(150):\n"
        "    try:\n"
        f"        limits.conversation_start_admit(session_key=uuid.uuid4().hex, client_address={address!r})\n"
        "        admitted += 1\n"
        "    except CustomerError:\n"
        "        pass\n"
        "print(admitted)"
    )

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(run_in_another_process, code) for _ in range(4)))

    admitted = [int(out.split()[-1]) for out in asyncio.run(all_at_once())]
    assert sum(admitted) == 500, admitted


def test_a_message_and_its_address_are_counted_in_one_round_trip(django_assert_max_num_queries, settings):
    if settings.CHAT_LIMITS_REDIS_URL:
        calls: list[Any] = []
        store = counters.store()
        real = store.client.pipeline
        store.client.pipeline = lambda **kwargs: calls.append(kwargs) or real(**kwargs)
        try:
            limits.message_admit(session_key=uuid.uuid4().hex, client_address=an_address())
        finally:
            store.client.pipeline = real
        assert len(calls) == 1
    else:
        with django_assert_max_num_queries(1):
            limits.message_admit(session_key=uuid.uuid4().hex, client_address=an_address())


def test_purging_keeps_the_current_windows_and_live_leases():
    name = f"keep-{uuid.uuid4().hex}"
    counts = counters.store().count_events([name], 3600)
    counters.store().purge()
    assert counters.store().count_events([name], 3600) == {name: counts[name] + 1}
