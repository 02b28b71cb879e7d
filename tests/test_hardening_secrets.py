"""Secrets: an API key the customer types again after verification, or that the model echoes, is masked
in storage too, so no row, export or review page holds it (OWASP LLM02, sensitive information)."""

from __future__ import annotations

import io

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from chat import services
from chat.models import Conversation, Turn
from chat.secrets import MASK
from tests.support.driver import Chat
from tests.support.models import calls, say_text
from tickets.services import apikey_finder, apikey_rotate

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def john_key(demo_data) -> str:
    _, raw = apikey_rotate(customer=User.objects.get(username="john_doe"))
    return raw


async def test_a_key_typed_again_or_echoed_is_masked_in_rows_exports_and_review(chat_model, john_key, client):
    model = chat_model.script()
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


# EVERY PATH A RAW KEY TOOK (issue 9, item 8): one design in chat.secrets, checked on every way out.


def _everywhere_stored(conversation_id, client) -> str:
    """Everything a raw key could still be found in, once the conversation is over, as one text."""
    from chat.selectors import conversation_replay_frames
    from tickets.models import VerificationAttempt

    rows = list(Turn.objects.filter(conversation_id=conversation_id).values_list("content", "tool_calls", "result"))
    attempts = list(VerificationAttempt.objects.values_list("username", flat=True))
    exports = io.StringIO()
    call_command("export_transcripts", stdout=exports)
    call_command("export_transcripts", "--format", "csv", stdout=exports)
    client.force_login(User.objects.get(username="admin"))
    pages = [
        client.get(reverse("operators:conversation", args=[conversation_id])).content.decode(),
        client.get(reverse("admin:chat_conversation_change", args=[conversation_id])).content.decode(),
    ]
    replay = conversation_replay_frames(conversation_id=conversation_id)
    return "\n".join(map(str, [rows, attempts, exports.getvalue(), *pages, replay]))


def _searched(key: str, client) -> str:
    client.force_login(User.objects.get(username="admin"))
    return client.get(reverse("operators:conversations"), {"q": key}).content.decode()


def verify(key: str, username: str = "john_doe"):
    return calls(("verify_user", {"username": username, "api_key": key}))


ECHO = "Thanks! For your records, the key you gave is {key} and I'll keep it safe."

SCENARIOS = {
    # name: (customer message, model replies for that turn)
    "echo after verifying": (
        "I'm john_doe, key {key}",
        lambda key: [verify(key), say_text(ECHO.format(key=key))],
    ),
    "echo before verifying": (
        "I'm john_doe, key {key}",
        lambda key: [
            calls(("verify_user", {"username": "john_doe", "api_key": key}), content=ECHO.format(key=key)),
            say_text("Verified."),
        ],
    ),
    "broken JSON before a valid call": (
        "I'm john_doe, key {key}",
        lambda key: [
            calls(("verify_user", '{"username": "john_doe", "api_key": "' + key + '"')),
            verify(key),
            say_text("Verified."),
        ],
    ),
    "a wrong tool name before a valid call": (
        "I'm john_doe, key {key}",
        lambda key: [calls(("verifyUser", {"username": "john_doe", "api_key": key})), verify(key), say_text("OK.")],
    ),
    "typed twice, quoted and not": (
        'username john_doe, my key is "{key}" (that is {key})',
        lambda key: [verify(key), say_text("Verified.")],
    ),
    "the key put in the username field": (
        "I'm john_doe, key {key}",
        lambda key: [verify(key, username=key), verify(key), say_text("Verified.")],
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_a_raw_key_is_found_nowhere_whatever_path_it_takes(chat_model, scenario, john_key, client):
    message, replies = SCENARIOS[scenario]
    model = chat_model.script()
    chat = await Chat.start(greet=True)
    model.queue(*replies(john_key))
    await chat.respond(message.format(key=john_key))
    requests_before = len(model.requests)
    model.queue(say_text(f"Once more: {john_key}."))  # echoed again in a later turn, once known
    later = await chat.respond(f"Thanks. Was it {john_key}?")
    await chat.respond("bye")

    assert john_key not in str(later), "frames to this tab, other tabs and operators"
    assert all(john_key not in str(request) for request in model.requests[requests_before:]), "model requests"
    stored = await database_sync_to_async(_everywhere_stored)(chat.id, client)
    assert john_key not in stored and MASK in stored
    assert chat.id.hex not in (await database_sync_to_async(_searched)(john_key, client)).replace("-", "")
    assert await database_sync_to_async(
        Turn.objects.filter(conversation_id=chat.id, role=Turn.Role.USER).exclude(content__contains=MASK).count
    )() == 1, "only the goodbye holds no key: every message that held it is masked"


async def test_a_secret_split_across_two_stream_pieces_is_still_masked(john_key, monkeypatch):
    from chat.secrets import MaskedStream, SecretKeeper

    stream = MaskedStream(SecretKeeper(known=[john_key]))
    half = len(john_key) // 2
    sent = stream.push(f"your key {john_key[:half]}") + stream.push(f"{john_key[half:]} is safe") + stream.flush()
    assert sent == f"your key {MASK} is safe"


def test_a_turn_asks_the_digests_about_each_word_once_and_still_masks_every_time(monkeypatch):
    """A reply's words are checked as deltas, in its ``message`` frame and as its row: the digests (an HMAC
    or two per word) are asked once per distinct word a turn, and the memory is bounded."""
    from chat.secrets import MaskedStream, SecretKeeper

    asked: list[str] = []

    def is_secret(token: str) -> bool:
        asked.append(token)
        return token == "s3cret-key"

    keeper = SecretKeeper(is_secret=is_secret)
    text = "Noted: your key s3cret-key is safe."
    masked = f"Noted: your key {MASK} is safe."
    stream = MaskedStream(keeper)
    assert stream.push("Noted: your key s3cr") + stream.push("et-key is safe.") + stream.flush() == masked
    assert keeper.mask_frame({"type": "message", "text": text}) == {"type": "message", "text": masked}
    assert keeper.mask_messages([{"role": "assistant", "content": text}]) == [{"role": "assistant", "content": masked}]
    assert "s3cret-key" in asked and len(asked) == len(set(asked)), asked

    monkeypatch.setattr(SecretKeeper, "VERDICTS_KEPT", 2)
    small = SecretKeeper(is_secret=is_secret)
    for _ in range(3):
        assert small.mask_text("one two three s3cret-key four") == f"one two three {MASK} four"
    assert len(small._verdicts) <= 2


def test_secrets_learnt_together_are_masked_from_where_each_was_given_with_one_read_of_the_turns():
    """Two secrets learnt in one step: each is masked in every earlier turn from the one where it was given
    on (the customer's message, or a tool call's arguments), whatever the case of its first mention, and
    left alone before that; the earlier turns are read once, whatever the number of secrets."""
    conversation = Conversation.objects.create(session_key="s")
    services.turns_append(conversation_id=conversation.id, messages=[
        {"role": "assistant", "content": "Say alpha-77 or BETA-88 to begin."},  # before either was given
        {"role": "user", "content": "My code is Alpha-77, and alpha-77 it is."},  # alpha given (any case)
        {"role": "assistant", "content": "Noted alpha-77; now beta-88?"},  # beta not given yet: kept
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "verify_user", "arguments": '{"k": "beta-88"}'}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"echo": "beta-88 alpha-77"}'},
    ], tool_results={"c1": (False, {"echo": "beta-88 alpha-77"})})
    with CaptureQueriesContext(connection) as queries:
        services.turns_append(
            conversation_id=conversation.id, messages=[{"role": "assistant", "content": "Done."}],
            new_secrets=["alpha-77", "beta-88"],
        )
    turns = list(conversation.turns.exclude(role=Turn.Role.SYSTEM).order_by("seq"))
    assert [turn.content for turn in turns[:3]] == [
        "Say alpha-77 or BETA-88 to begin.",
        f"My code is Alpha-77, and {MASK} it is.",
        f"Noted {MASK}; now beta-88?",
    ]
    assert turns[3].tool_calls[0]["function"]["arguments"] == f'{{"k": "{MASK}"}}'
    assert turns[4].result == {"echo": f"{MASK} {MASK}"}
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT") and "chat_turn" in q["sql"]]
    assert len([sql for sql in reads if "MAX" not in sql]) == 1, reads
