"""The widget's server side: framing, signed-in customers (and their hostile cases), /healthz, the model's
status, and conversations that start only when the customer writes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from chat import modelstatus
from chat.agent import ModelError
from chat.identity import SESSION_KEY
from chat.models import Conversation, Turn
from tests.support.sockets import assistant_texts, of_type, open_chat, say, until_idle
from tickets.models import Verification, VerificationAttempt
from tickets.signatures import signature_for

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "shared-with-the-website"
SHOP = "https://shop.example.com"


@pytest.fixture(autouse=True)
def widget_settings(settings):
    settings.CHAT_IDENTITY_SECRET = SECRET
    settings.CHAT_WIDGET_ORIGINS = [SHOP]
    return settings


@pytest.fixture
def demo(db: None) -> None:
    from django.core.management import call_command

    with open(os.devnull, "w") as quiet:
        call_command("seed_demo", password="x-demo-password-1", stdout=quiet)


# FRAMING


def test_only_the_embed_page_may_be_framed_and_only_by_the_listed_origins():
    embed = Client().get("/embed/", {"parent": SHOP})
    assert embed.status_code == 200
    assert "X-Frame-Options" not in embed.headers
    assert f"frame-ancestors {SHOP}" in embed.headers["Content-Security-Policy"]
    assert f'data-parent-origin="{SHOP}"' in embed.content.decode()
    for path in ("/", "/operators/", "/admin/login/", "/healthz"):
        response = Client().get(path)
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"], path


def test_an_unlisted_parent_is_never_talked_to_and_no_list_means_no_framing(widget_settings):
    embed = Client().get("/embed/", {"parent": "https://evil.example"})
    assert 'data-parent-origin=""' in embed.content.decode()
    assert "evil.example" not in embed.headers["Content-Security-Policy"]
    widget_settings.CHAT_WIDGET_ORIGINS = []
    assert "frame-ancestors 'none'" in Client().get("/embed/").headers["Content-Security-Policy"]


def test_a_page_view_starts_nothing():
    page = Client().get("/")
    assert 'data-autostart="0"' in page.content.decode()
    assert Client().head("/").status_code == 200
    assert Conversation.objects.count() == 0


# HEALTH


def test_healthz_answers_get_and_head_and_names_no_secret():
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok" if settings.CHAT_LIMITS_REDIS_URL
                               else "not configured"}
    assert Client().head("/healthz").status_code == 200
    assert response.headers["Cache-Control"].startswith("max-age=0")
    body = response.content.decode()
    for secret in (settings.SECRET_KEY, settings.DATABASES["default"]["NAME"], "redis://"):
        assert str(secret) not in body
    assert Client().post("/healthz").status_code == 405


def test_healthz_fails_when_a_dependency_does(monkeypatch, widget_settings):
    monkeypatch.setattr("chat.health.database_ok", lambda: False)
    response = Client().get("/healthz")
    assert response.status_code == 503 and response.json()["database"] == "failing"
    monkeypatch.setattr("chat.health.database_ok", lambda: True)
    widget_settings.CHAT_LIMITS_REDIS_URL = "redis://127.0.0.1:1/0"  # nobody listens there
    response = Client().get("/healthz")
    assert response.status_code == 503 and response.json()["redis"] == "failing"
    assert "127.0.0.1:1" not in response.content.decode()


# SIGNED-IN CUSTOMERS


def signed_session(username: str, signature: str | None) -> tuple[Client, str]:
    """A browser that made its chat session with the website's username and signature (the page's POST)."""
    browser = Client()
    data = {"user": username, **({"signature": signature} if signature is not None else {})}
    assert browser.post("/", data).status_code == 204
    return browser, browser.cookies[settings.SESSION_COOKIE_NAME].value


async def chat_as(session_key: str) -> tuple[object, object, list[dict]]:
    communicator, conversation_id = await open_chat(session_key)
    greeting = await until_idle(communicator)
    return communicator, conversation_id, greeting


@pytest.mark.usefixtures("demo", "no_turn_left_running")
async def test_a_valid_signature_verifies_the_conversation_and_no_key_is_asked():
    _, key = await database_sync_to_async(signed_session)("john_doe", signature_for("john_doe", SECRET))
    communicator, conversation_id, greeting = await chat_as(key)
    assert "Hello john_doe" in assistant_texts(greeting)[0] and "API key" not in assistant_texts(greeting)[0]
    frames = await say(communicator, "What is the status of ticket 12345?")
    await communicator.disconnect()
    result = of_type(frames, "tool")[-1]["result"]
    assert result == {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}

    @database_sync_to_async
    def stored() -> tuple[int | None, list[str], Verification]:
        conversation = Conversation.objects.get(id=conversation_id)
        notes = list(conversation.turns.filter(role=Turn.Role.SYSTEM).values_list("content", flat=True))
        return conversation.customer_id, notes, Verification.objects.get(conversation_id=conversation_id)

    customer_id, notes, verification = await stored()
    assert customer_id == (await database_sync_to_async(User.objects.get)(username="john_doe")).id
    assert any("verified this customer as john_doe" in note for note in notes)
    assert verification.api_key_id is None and verification.signer


@pytest.mark.usefixtures("demo", "no_turn_left_running")
@pytest.mark.parametrize(
    ("username", "signature"),
    [
        ("john_doe", signature_for("john_doe", "a guess")),  # forged
        ("john_doe", signature_for("jane_roe", SECRET)),  # replayed: jane's signature, john's name
        ("john_doe", None),  # missing: an unsigned username is never trusted
        ("john_doe", ""),
        ("staff", signature_for("staff", SECRET)),  # staff are never customers
        ("nobody", signature_for("nobody", SECRET)),
    ],
)
async def test_a_bad_or_missing_signature_verifies_nobody_and_is_logged(username, signature, caplog):
    with caplog.at_level(logging.WARNING, logger="chat.identity"):
        _, key = await database_sync_to_async(signed_session)(username, signature)
    assert any("sign-in refused" in record.getMessage() for record in caplog.records)
    assert not any(signature and signature in record.getMessage() for record in caplog.records if signature)
    communicator, _conversation_id, greeting = await chat_as(key)
    assert "username and API key" in assistant_texts(greeting)[0]
    frames = await say(communicator, "What is the status of ticket 12345?")
    await communicator.disconnect()
    assert "Billing Query" not in str(frames)
    assert not await database_sync_to_async(Verification.objects.exists)()


@pytest.mark.usefixtures("demo")
def test_signing_is_off_without_a_secret(widget_settings):
    widget_settings.CHAT_IDENTITY_SECRET = None
    browser, _ = signed_session("john_doe", signature_for("john_doe", ""))
    assert SESSION_KEY not in browser.session


@pytest.mark.usefixtures("demo")
def test_another_signed_in_customer_gets_a_fresh_session():
    browser, first = signed_session("john_doe", signature_for("john_doe", SECRET))
    browser.post("/", {"user": "john_doe", "signature": signature_for("john_doe", SECRET)})
    assert browser.cookies[settings.SESSION_COOKIE_NAME].value == first  # the same customer keeps it
    browser.post("/", {"user": "jane_roe", "signature": signature_for("jane_roe", SECRET)})
    assert browser.cookies[settings.SESSION_COOKIE_NAME].value != first
    browser.post("/", {"user": "john_doe", "signature": "forged"})
    assert browser.session[SESSION_KEY]["username"] == "jane_roe"  # a bad signature changes nothing


@pytest.mark.usefixtures("demo", "no_turn_left_running")
@pytest.mark.parametrize("revocation", ["deactivated", "expired", "secret rotated"])
async def test_a_signed_verification_ends_with_revocation_expiry_and_a_new_secret(revocation, widget_settings):
    _, key = await database_sync_to_async(signed_session)("john_doe", signature_for("john_doe", SECRET))
    communicator, _conversation_id, _ = await chat_as(key)

    @database_sync_to_async
    def revoke() -> None:
        if revocation == "deactivated":
            User.objects.filter(username="john_doe").update(is_active=False)
        elif revocation == "expired":
            Verification.objects.update(created_at=timezone.now() - timedelta(seconds=settings.VERIFY_TTL_SECONDS + 1))
        else:
            widget_settings.CHAT_IDENTITY_SECRET = "rotated"

    await revoke()
    frames = await say(communicator, "What is the status of ticket 12345?")
    await communicator.disconnect()
    assert "Billing Query" not in str(frames)
    assert of_type(frames, "tool")[-1]["status"] == "error"


@pytest.mark.usefixtures("demo", "no_turn_left_running")
async def test_an_expired_sign_in_in_the_session_verifies_nothing_more(monkeypatch):
    _, key = await database_sync_to_async(signed_session)("john_doe", signature_for("john_doe", SECRET))
    later = time.time() + settings.VERIFY_TTL_SECONDS + 1
    monkeypatch.setattr("chat.identity.time.time", lambda: later)
    communicator, _, greeting = await chat_as(key)
    await communicator.disconnect()
    assert "username and API key" in assistant_texts(greeting)[0]


@pytest.mark.usefixtures("demo", "no_turn_left_running")
async def test_a_locked_verification_is_not_bypassed_by_a_signature():
    @database_sync_to_async
    def lock() -> None:
        for address in (None, "127.0.0.1"):  # wherever the test socket says it comes from
            for _ in range(settings.VERIFY_MAX_FAILURES):
                VerificationAttempt.objects.create(
                    username="john_doe", conversation_id="00000000-0000-0000-0000-000000000000",
                    client_address=address, succeeded=False,
                )

    await lock()
    _, key = await database_sync_to_async(signed_session)("john_doe", signature_for("john_doe", SECRET))
    communicator, _, greeting = await chat_as(key)
    await communicator.disconnect()
    assert "username and API key" in assistant_texts(greeting)[0]
    assert not await database_sync_to_async(Verification.objects.exists)()


# THE MODEL'S STATUS


@pytest.fixture
def fresh_status():
    modelstatus.forget()
    yield
    modelstatus.forget()


class Unreachable:
    name = "unreachable"

    async def complete(self, messages, tools, on_delta):
        error = ModelError("model_unavailable", "The assistant can't be reached right now.")
        await modelstatus.record(reachable=False)
        raise error


@pytest.mark.usefixtures("demo", "no_turn_left_running", "fresh_status")
async def test_the_header_hears_when_the_model_goes_down_and_comes_back(monkeypatch):
    from chat import llm

    communicator, _ = await open_chat(None)
    await until_idle(communicator)  # the greeting, from the builtin model: up, nothing pushed
    builtin = llm.get_chat_model()
    monkeypatch.setattr(builtin, "complete", Unreachable().complete)
    monkeypatch.setattr(builtin, "probe", _never)
    frames = await say(communicator, "hello?")
    assert {"type": "status", "model": "down"} in frames
    again, _ = await open_chat(None)  # a page opened now is told at once
    assert await again.receive_json_from() == {"type": "status", "model": "down"}
    await until_idle(again)
    await again.disconnect()
    monkeypatch.undo()
    frames = await say(communicator, "hello again")
    if {"type": "status", "model": "up"} not in frames:
        # The turn's own frames go straight to this process's socket (chat.fanout); the status, to every
        # page, through the channel layer: it may arrive just after the turn's idle.
        frames.append(await communicator.receive_json_from(timeout=5))
    await communicator.disconnect()
    assert {"type": "status", "model": "up"} in frames
    assert modelstatus.model_state() == "up"


async def _never() -> bool:
    return False


@pytest.mark.usefixtures("fresh_status")
async def test_while_down_the_probe_brings_the_status_back_by_itself(monkeypatch, settings):
    from chat import llm

    settings.CHAT_MODEL_PROBE_SECONDS = 0.01
    pushed: list[str] = []

    async def push() -> None:
        pushed.append(modelstatus.model_state())

    monkeypatch.setattr(modelstatus, "_broadcast", push)
    model = llm.get_chat_model()
    assert await model.probe()  # the builtin endpoint answers
    await modelstatus.record(reachable=False)
    for _ in range(500):
        if modelstatus.model_state() == "up":
            break
        await asyncio.sleep(0.01)
    assert pushed == ["down", "up"] and modelstatus.model_state() == "up"


def test_the_page_renders_the_models_state(fresh_status):
    assert 'data-model="up"' in Client().get("/").content.decode()
    modelstatus._reachable = False
    assert re.search(r'data-model="down"', Client().get("/").content.decode())
