"""A revoked operator stops watching: the live socket closes when the user's review right goes away.

The right can go in many ways (deactivated, no longer staff, out of the "Operators" group, the group or
the user losing the permission, the account deleted); each one closes the socket with 4403 and no
further frame of the conversation reaches it. Operators who keep the right keep receiving.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission, User

from chat.consumers import conversation_group
from chat.operators.access import OPERATORS
from tests.support.sockets import operator_socket, staff_headers, watched_conversation

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10
TICKET_FRAME = {"type": "tool", "name": "get_ticket_status", "status": "done",
                "result": {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}}


def _user(username: str) -> User:
    return User.objects.get(username=username)


def deactivate(username: str) -> None:
    user = _user(username)
    user.is_active = False
    user.save()


def unstaff(username: str) -> None:
    user = _user(username)
    user.is_staff = False
    user.save(update_fields=["is_staff"])


def leave_group(username: str) -> None:
    _user(username).groups.remove(Group.objects.get(name=OPERATORS))


def removed_by_the_group(username: str) -> None:
    Group.objects.get(name=OPERATORS).user_set.remove(_user(username))


def groups_cleared(username: str) -> None:
    _user(username).groups.clear()


def group_loses_the_permission(username: str) -> None:
    Group.objects.get(name=OPERATORS).permissions.remove(
        Permission.objects.get(content_type__app_label="chat", codename="review_conversation")
    )


def group_deleted(username: str) -> None:
    Group.objects.get(name=OPERATORS).delete()


def account_deleted(username: str) -> None:
    _user(username).delete()


REVOCATIONS: list[Callable[[str], None]] = [
    deactivate, unstaff, leave_group, removed_by_the_group, groups_cleared, group_loses_the_permission,
    group_deleted, account_deleted,
]


async def watching(conversation_id: uuid.UUID, username: str) -> WebsocketCommunicator:
    """A connected operator socket that has relayed one frame already."""
    communicator = operator_socket(conversation_id, await staff_headers(username))
    connected, detail = await communicator.connect(timeout=TIMEOUT)
    assert connected, detail
    await relay(conversation_id, {"type": "message", "role": "assistant", "text": "Hello"})
    assert (await communicator.receive_json_from(timeout=TIMEOUT))["text"] == "Hello"
    return communicator


async def relay(conversation_id: uuid.UUID, frame: dict) -> None:
    await get_channel_layer().group_send(conversation_group(conversation_id), {"type": "chat.frame", "frame": frame})


async def assert_closed_and_deaf(communicator: WebsocketCommunicator, conversation_id: uuid.UUID) -> None:
    closed = await communicator.receive_output(timeout=TIMEOUT)
    assert closed == {"type": "websocket.close", "code": 4403}
    await relay(conversation_id, TICKET_FRAME)
    assert await communicator.receive_nothing(timeout=0.3)


@pytest.mark.parametrize("revoke", REVOCATIONS, ids=lambda revoke: revoke.__name__)
async def test_a_revoked_operator_is_disconnected_and_receives_nothing_more(revoke):
    conversation_id = await watched_conversation()
    communicator = await watching(conversation_id, "operator")
    await database_sync_to_async(revoke)("operator")
    await assert_closed_and_deaf(communicator, conversation_id)
    await communicator.disconnect()


async def test_losing_a_directly_given_permission_disconnects():
    conversation_id = await watched_conversation()

    @database_sync_to_async
    def grant(grant: bool) -> None:
        permission = Permission.objects.get(content_type__app_label="chat", codename="review_conversation")
        (_user("staff").user_permissions.add if grant else _user("staff").user_permissions.remove)(permission)

    await grant(True)
    communicator = await watching(conversation_id, "staff")
    await grant(False)
    await assert_closed_and_deaf(communicator, conversation_id)
    await communicator.disconnect()


async def test_operators_who_keep_the_right_keep_receiving():
    conversation_id = await watched_conversation()

    @database_sync_to_async
    def second_operator() -> None:
        User.objects.create_user("operator2", is_staff=True).groups.add(Group.objects.get(name=OPERATORS))

    @database_sync_to_async
    def harmless_edit(username: str) -> None:
        user = _user(username)
        user.first_name = "Olga"
        user.save()  # signals fire, the re-check passes

    await second_operator()
    kept = operator_socket(conversation_id, await staff_headers("operator"))
    revoked = operator_socket(conversation_id, await staff_headers("operator2"))
    assert (await kept.connect(timeout=TIMEOUT))[0] and (await revoked.connect(timeout=TIMEOUT))[0]
    await harmless_edit("operator")
    await database_sync_to_async(deactivate)("operator2")
    assert await revoked.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    await relay(conversation_id, TICKET_FRAME)
    assert await kept.receive_json_from(timeout=TIMEOUT) == TICKET_FRAME
    assert await revoked.receive_nothing(timeout=0.3)
    await kept.disconnect()
    await revoked.disconnect()


async def test_a_right_lost_without_signals_is_caught_on_the_next_frame(monkeypatch):
    # A bulk ``update()`` sends no signal: the per-frame backstop re-checks once its last check is older
    # than RECHECK_SECONDS (0 here). raising=False so that, before the backstop existed, the test fails on
    # what matters: the frame reaching the revoked operator.
    monkeypatch.setattr("chat.operators.consumers.RECHECK_SECONDS", 0, raising=False)
    conversation_id = await watched_conversation()
    communicator = await watching(conversation_id, "operator")
    await database_sync_to_async(lambda: User.objects.filter(username="operator").update(is_active=False))()
    await relay(conversation_id, TICKET_FRAME)
    assert await communicator.receive_output(timeout=TIMEOUT) == {"type": "websocket.close", "code": 4403}
    await relay(conversation_id, TICKET_FRAME)
    assert await communicator.receive_nothing(timeout=0.3)
    await communicator.disconnect()


def test_every_process_connects_the_receivers_at_start_up():
    # The receivers must be live in a process that never opens the operators' pages or socket (a shell,
    # a management command), or rights it changes would not reach the sockets held elsewhere.
    script = (
        "import django; django.setup()\n"
        "from django.db.models.signals import m2m_changed, post_save\n"
        "uids = {key[0] for key, *_ in post_save.receivers + m2m_changed.receivers}\n"
        "print(sorted(uid for uid in uids if str(uid).startswith('operators.rights.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "DJANGO_SETTINGS_MODULE": "supportsite.settings"})
    assert result.stdout.strip() == str(sorted([
        "operators.rights.group_permissions", "operators.rights.user_groups", "operators.rights.user_permissions",
        "operators.rights.user_saved",
    ]))
