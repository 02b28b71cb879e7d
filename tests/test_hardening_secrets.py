"""Secrets: an API key the customer types again after verification, or that the model echoes, is masked
in storage too, so no row, export or review page holds it (OWASP LLM02, sensitive information)."""

from __future__ import annotations

import io

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.core.management import call_command
from django.urls import reverse

from chat.agent import MASK
from chat.models import Turn
from tests.hardening_support import Chat, QueuedModel, calls, say_text, use_model
from tickets.services import apikey_finder, apikey_rotate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def john_key(demo_data) -> str:
    _, raw = apikey_rotate(customer=User.objects.get(username="john_doe"))
    return raw


async def test_a_key_typed_again_or_echoed_is_masked_in_rows_exports_and_review(john_key, monkeypatch, client):
    model = QueuedModel()
    use_model(monkeypatch, model)
    chat = await Chat.start(greet=True)
    model.queue(calls(("verify_user", {"username": "john_doe", "api_key": john_key})), say_text("Verified."))
    await chat.respond(f"I'm john_doe, key {john_key}")
    model.queue(say_text(f"Noted: your key is {john_key}."))
    frames = await chat.respond(f"Just to be sure, my key is {john_key}. Did you get it?")
    await chat.respond("thanks")

    assert [f["text"] for f in frames if f.get("role") == "user"] == [
        f"Just to be sure, my key is {MASK}. Did you get it?"
    ], "other tabs see it masked too"
    assert all(john_key not in str(request) for request in model.requests[2:]), "the model never sees it again"
    rows = await database_sync_to_async(
        lambda: list(Turn.objects.filter(conversation_id=chat.id).values_list("content", "tool_calls"))
    )()
    assert john_key not in str(rows)
    assert (f"Just to be sure, my key is {MASK}. Did you get it?", None) in rows
    assert (f"Noted: your key is {MASK}.", None) in rows

    export = io.StringIO()
    await database_sync_to_async(call_command)("export_transcripts", stdout=export)
    assert john_key not in export.getvalue() and MASK in export.getvalue()
    operator = await database_sync_to_async(User.objects.get)(username="operator")
    await database_sync_to_async(client.force_login)(operator)
    page = await database_sync_to_async(client.get)(reverse("operators:conversation", args=[chat.id]))
    assert page.status_code == 200
    assert john_key not in page.content.decode() and MASK in page.content.decode()


def test_the_finder_matches_only_active_keys_of_that_customer_with_one_query(john_key, django_assert_num_queries):
    john = User.objects.get(username="john_doe")
    with django_assert_num_queries(1):
        find = apikey_finder(john.id)
        text = f'key "{john_key}", old key key, jane-key, {john_key}. {john_key[:-1]}'
        assert find(text) == [john_key]
    assert apikey_finder(User.objects.get(username="jane_roe").id)(text) == ["jane-key"]
    apikey_rotate(customer=john)
    assert apikey_finder(john.id)(text) == [], "a revoked key is no longer a secret to look for"
