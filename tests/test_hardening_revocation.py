"""Verification lasts only while it should (issue 9, item 9): rotating a customer's keys, deactivating
the customer, or the verification growing older than ``VERIFY_TTL_SECONDS`` ends a conversation's access
to their tickets at once, whatever the conversation or the model believes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.utils import timezone

from tests.support.driver import Chat
from tests.support.models import ScriptedModel, calls, say_text
from tickets.models import Verification
from tickets.services import apikey_rotate

pytestmark = pytest.mark.django_db(transaction=True)


def lookup():
    return calls(("get_ticket_status", {"ticket_id": "12345"}))


def ticket_results(frames) -> list[object]:
    return [f["result"] for f in frames if f["type"] == "tool" and f["status"] != "started"]


@pytest.fixture
async def verified(chat_model, demo_data) -> tuple[Chat, ScriptedModel]:
    model = chat_model.script()
    chat = await Chat.start()
    model.queue(calls(("verify_user", {"username": "john_doe", "api_key": "key"})), say_text("Verified."))
    await chat.respond("john_doe, key: key")
    model.queue(lookup(), say_text("Here it is."))
    assert ticket_results(await chat.respond("12345?"))[0]["status"] == "Open"
    return chat, model


def _rotate() -> None:
    apikey_rotate(customer=User.objects.get(username="john_doe"))


def _deactivate() -> None:
    User.objects.filter(username="john_doe").update(is_active=False)


def _age_verification() -> None:
    Verification.objects.update(created_at=timezone.now() - timedelta(hours=2))


@pytest.mark.parametrize(
    "revoke", [_rotate, _deactivate, _age_verification], ids=["keys rotated", "deactivated", "expired"]
)
async def test_a_verified_conversation_loses_access_when_its_verification_stops_holding(verified, revoke, settings):
    settings.VERIFY_TTL_SECONDS = 3600
    chat, model = verified
    await database_sync_to_async(revoke)()
    model.queue(lookup(), say_text("Sorry."))
    (result,) = ticket_results(await chat.respond("12345 again?"))
    assert "status" not in result and "not verified" in result["error"]


async def test_verifying_again_with_the_new_key_restores_access(verified):
    chat, model = verified
    _, new_key = await database_sync_to_async(apikey_rotate)(customer=await User.objects.aget(username="john_doe"))
    model.queue(calls(("verify_user", {"username": "john_doe", "api_key": new_key})), lookup(), say_text("OK."))
    results = ticket_results(await chat.respond(f"my new key is {new_key}, and 12345?"))
    assert results[0] == {"success": True} and results[1]["status"] == "Open"
