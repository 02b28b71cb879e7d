"""On PostgreSQL every statement a turn waits for is a round trip to the server (0.2 to 0.5 ms on the test
machine, most of it waking the other side): the steps of a turn send their statements together.

Counted on the wire (libpq's trace of what the client sends), not timed. The numbering of turns written
together this way is checked against appends racing from other connections.
"""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, connections
from django.test import override_settings
from django.utils import timezone

from chat import services
from chat.models import Conversation, Turn
from chat.runtime import turn_start
from tickets.models import VerificationAttempt
from tickets.services import apikey_issue, apikey_known, apikey_match, verification_check, verification_locked
from tickets.tools import KEY_AS_USERNAME

pytestmark = pytest.mark.django_db(transaction=True)
postgresql_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has no round trips")

STEP = [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_ticket_status", "arguments": "{}"}}
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "Open"}'},
]


@contextmanager
def sent_queries() -> Iterator[list[str]]:
    """The queries this thread's connection sends meanwhile, each a round trip (BEGIN and COMMIT too)."""
    import psycopg

    connection.ensure_connection()
    pgconn = connection.connection.pgconn
    sent: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace"
        with trace.open("w") as sink:
            pgconn.trace(sink.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                yield sent
            finally:
                pgconn.untrace()
        for line in trace.read_text().splitlines():  # a query's own line breaks continue its line
            direction, _, message, *text = [*line.split("\t"), "", "", ""][:4]
            if direction == "F" and message in ("Query", "Sync"):
                sent.append(text[0].strip().strip('"') or message)


def conversation_with_turns(count: int) -> uuid.UUID:
    conversation = services.conversation_start(session_key=uuid.uuid4().hex, client_address="198.51.100.7")
    services.turns_append(
        conversation_id=conversation.id,
        messages=[{"role": "user", "content": f"message {n}"} for n in range(count)],
    )
    return conversation.id


@postgresql_only
def test_a_model_step_is_stored_in_one_round_trip_numbered_after_the_last_turn():
    conversation_id = conversation_with_turns(3)
    before = Conversation.objects.get(id=conversation_id).updated_at
    with sent_queries() as sent:
        turns = services.turns_append(conversation_id=conversation_id, messages=STEP, meta={"model": "m"})
    assert len(sent) == 1, sent  # no BEGIN, no COMMIT: the server runs the query as one transaction
    assert sent[0].startswith("UPDATE chat_conversation") and "INSERT INTO" in sent[0]
    stored = list(Turn.objects.filter(conversation_id=conversation_id).order_by("seq"))
    assert [(t.seq, t.role) for t in stored][-2:] == [(4, "assistant"), (5, "tool")]
    assert [(t.pk, t.seq, t.model) for t in turns] == [(t.pk, t.seq, t.model) for t in stored[-2:]]
    assert not turns[0]._state.adding
    assert Conversation.objects.get(id=conversation_id).updated_at > before


@postgresql_only
def test_a_conversation_starts_in_one_round_trip():
    with sent_queries() as sent:
        conversation = services.conversation_start(session_key="s" * 32, client_address=None)
    assert len(sent) == 1, sent
    assert list(conversation.turns.values_list("seq", "role")) == [(0, "system")]


@postgresql_only
def test_a_new_browser_session_is_stored_in_one_round_trip_and_a_taken_key_is_drawn_again(monkeypatch):
    from importlib import import_module

    from django.conf import settings
    from django.contrib.sessions.models import Session

    taken = import_module(settings.SESSION_ENGINE).SessionStore()
    taken.create()
    fresh = import_module(settings.SESSION_ENGINE).SessionStore()
    draws = iter([taken.session_key, "k" * 32])
    monkeypatch.setattr("supportsite.sessions.get_random_string", lambda length, chars: next(draws))
    with sent_queries() as sent:
        fresh.create()
    assert [query.split()[0] for query in sent] == ["INSERT", "INSERT"], sent  # the taken key, then a new one
    assert fresh.session_key == "k" * 32 and Session.objects.filter(session_key="k" * 32).exists()
    fresh["seen"] = True
    fresh.save()  # an existing session is saved as Django saves it
    assert import_module(settings.SESSION_ENGINE).SessionStore("k" * 32).load() == {"seen": True}


@postgresql_only
def test_a_customer_message_is_stored_and_a_pending_card_dropped_in_one_round_trip():
    from chat.consumers import customer_message_arrive
    from chat.models import Confirmation, WaitingMessage

    conversation_id = conversation_with_turns(1)
    card = Confirmation.objects.create(
        conversation_id=conversation_id, tool_call_id="call_1", tool="create_ticket", frame={},
        expires_at=timezone.now(),
    )
    arrive = {"session_key": "s" * 32, "client_address": "198.51.100.7", "conversation_id": conversation_id}
    with sent_queries() as sent:
        assert customer_message_arrive(**arrive, text="Actually, no.") is True
    stored = [query for query in sent if "chat_waitingmessage" in query]
    assert len(stored) == 1 and "UPDATE chat_confirmation" in stored[0], sent
    assert not {"BEGIN", "COMMIT"} & set(sent), sent
    card.refresh_from_db()
    assert card.state == Confirmation.State.SUPERSEDED
    assert list(WaitingMessage.objects.values_list("text", flat=True)) == ["Actually, no."]
    assert customer_message_arrive(**arrive, text="Hello?") is False, "no card pending any more"


@postgresql_only
def test_a_message_arriving_at_a_free_conversation_is_stored_by_the_turns_start_in_its_round_trips():
    """Queued (behind one already waiting), a card left pending dropped, the oldest taken and stored as the
    customer's turn: BEGIN, a query, a query, COMMIT, as for any turn's start; no round trip of its own."""
    from chat.models import Confirmation, WaitingMessage
    from chat.runtime import Arrival, turn_start_arriving

    conversation_id = conversation_with_turns(1)
    services.customer_message_wait(conversation_id=conversation_id, text="Earlier, kept by a process that died")
    card = Confirmation.objects.create(
        conversation_id=conversation_id, tool_call_id="call_1", tool="create_ticket", frame={},
        expires_at=timezone.now(),
    )
    admitted = []

    async def never(*args) -> None:
        raise AssertionError("a message arriving at a free conversation is not stored on its own")

    arrival = Arrival(text="Hello?", admit=lambda: admitted.append(True), store=never, refuse=never)
    with sent_queries() as sent:
        start = turn_start_arriving(conversation_id, arrival)
    assert [query.split()[0] for query in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    assert admitted == [True]
    assert start.customer_text == "Earlier, kept by a process that died"
    assert list(WaitingMessage.objects.values_list("text", flat=True)) == ["Hello?"]
    card.refresh_from_db()
    assert card.state == Confirmation.State.SUPERSEDED


@postgresql_only
def test_starting_a_turn_sends_its_statements_in_three_round_trips_besides_begin_and_commit():
    conversation_id = conversation_with_turns(2)
    services.customer_message_wait(conversation_id=conversation_id, text="Where is my ticket?")
    with sent_queries() as sent:
        start = turn_start(conversation_id)
    assert start.customer_text == "Where is my ticket?"
    assert [query.split()[0] for query in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    seqs = list(Turn.objects.filter(conversation_id=conversation_id).values_list("seq", "content"))
    assert seqs[-1] == (3, "Where is my ticket?")


@postgresql_only
def test_an_append_that_learns_a_secret_masks_the_earlier_turns_in_two_queries_besides_begin_and_commit():
    conversation_id = services.conversation_start(session_key="s" * 32).id
    services.turns_append(conversation_id=conversation_id, messages=[
        {"role": "user", "content": "my key is sk-123"},
        *STEP,
        {"role": "assistant", "content": "Thanks, sk-123 works."},
    ], tool_results={"call_1": (False, {"echo": "sk-123"})})
    with sent_queries() as sent:
        services.turns_append(conversation_id=conversation_id, messages=[{"role": "assistant", "content": "Done."}],
                              new_secrets=["sk-123"])
    assert [query.split()[0] for query in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    turns = Turn.objects.filter(conversation_id=conversation_id).exclude(role="system").order_by("seq")
    assert [(turn.content, turn.result) for turn in turns] == [
        ("my key is ****", None), ("", None), ('{"status": "Open"}', {"echo": "****"}),
        ("Thanks, **** works.", None), ("Done.", None),
    ]
    conversation = Conversation.objects.get(id=conversation_id)
    assert conversation.secret_digests == [services.secret_digest("sk-123")]


def test_statements_run_together_are_one_transaction():
    """A failing statement undoes the ones before it, on both backends."""
    conversation_id = conversation_with_turns(1)
    before = Conversation.objects.get(id=conversation_id).updated_at
    touch = services._touch_statement(conversation_id)
    repeated = services.rows_insert_statement([Turn(conversation_id=conversation_id, seq=0, role="user")])
    with pytest.raises(IntegrityError):  # seq 0 is the system prompt's
        services.statements_run([touch, repeated])
    assert Conversation.objects.get(id=conversation_id).updated_at == before
    assert Turn.objects.filter(conversation_id=conversation_id).count() == 2


@postgresql_only
def test_appends_racing_from_other_connections_are_numbered_in_order_without_gaps_or_repeats():
    """Each append locks the conversation's row, then numbers its turns in the next statement, which reads
    the turns committed by the append it waited for: no repeated number (the insert would fail), no gap."""
    conversation_id = services.conversation_start(session_key=uuid.uuid4().hex).id
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def appender(name: str) -> None:
        try:
            start.wait()
            for n in range(15):
                services.turns_append(
                    conversation_id=conversation_id,
                    messages=[{"role": "user", "content": f"{name} {n} {part}"} for part in "ab"],
                )
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=appender, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = list(Turn.objects.filter(conversation_id=conversation_id).order_by("seq").values_list("seq", "content"))
    assert [seq for seq, _ in stored] == list(range(0, 121))
    for name in ("t0", "t1", "t2", "t3"):  # each append's two turns stand together, in the order given
        mine = [(seq, content) for seq, content in stored if content.startswith(name + " ")]
        assert [content for _, content in mine] == [f"{name} {n} {part}" for n in range(15) for part in "ab"]
        assert all(mine[i + 1][0] == mine[i][0] + 1 for i in range(0, 30, 2))


def test_turns_stored_together_keep_the_order_given_and_their_numbers():
    conversation_id = conversation_with_turns(1)
    messages = [{"role": "user", "content": f"part {n}"} for n in range(12)]
    turns = services.turns_append(conversation_id=conversation_id, messages=messages)
    assert [(t.seq, t.content) for t in turns] == [(n + 2, f"part {n}") for n in range(12)]
    stored = {t.pk: (t.seq, t.content) for t in Turn.objects.filter(conversation_id=conversation_id)}
    assert all(stored[t.pk] == (t.seq, t.content) for t in turns)


@postgresql_only
def test_a_customer_verified_by_key_is_read_in_one_round_trip_and_written_in_one(demo_data):
    from chat.agent import ToolCall
    from chat.toolbox import Toolbox, ToolContext
    from tickets import tools
    from tickets.models import ApiKey, Verification, VerificationAttempt

    conversation = services.conversation_start(session_key="s" * 32, client_address="198.51.100.7")
    context = ToolContext(conversation.id, None, conversation.client_address)
    call = ToolCall("call_1", "verify_user", '{"username": "john_doe", "api_key": "key"}')
    with sent_queries() as sent:
        outcome = Toolbox([tools.verify_user]).run(call, context)
    assert outcome.result == {"success": True}
    reads, writes = sent  # no BEGIN or COMMIT either
    assert reads.startswith("SELECT") and reads.count("SELECT") == 4, reads  # known key? failures? keys?
    assert writes.startswith("UPDATE"), writes  # the key's use, the attempt, the verification, the customer
    john = ApiKey.objects.get(customer__username="john_doe")
    assert john.last_used_at is not None
    assert VerificationAttempt.objects.get(conversation_id=conversation.id).succeeded is True
    assert Verification.objects.get(conversation_id=conversation.id).api_key_id == john.pk
    conversation.refresh_from_db()
    assert conversation.customer_id == context.customer_id == john.customer_id


def test_text_that_looks_like_sql_or_placeholders_is_stored_as_written():
    """Statements sent together are one query text on PostgreSQL: every value is still a bound literal."""
    nasty = ["'; DROP TABLE chat_turn; --", "%s %(x)s %% {}", "back\\slash \\' \\\\", "$$dollar$$ $tag$", "ünï😀", ";"]
    conversation_id = conversation_with_turns(1)
    for text in nasty:
        services.customer_message_wait(conversation_id=conversation_id, text=text)
        assert turn_start(conversation_id).customer_text == text
    replies = [{"role": "assistant", "content": text} for text in nasty]
    services.turns_append(conversation_id=conversation_id, messages=replies)
    stored = Turn.objects.filter(conversation_id=conversation_id, seq__gt=1).order_by("seq")
    assert list(stored.values_list("content", flat=True)) == nasty + nasty


@pytest.mark.parametrize(
    ("username", "raw_key", "address"),
    [
        ("john_doe", "key", "198.51.100.7"),
        ("john_doe", "wrong", "198.51.100.7"),
        ("john_doe", "key", None),
        ("jane-key", "anything", "198.51.100.7"),  # another customer's key given as the username
        ("key", "key", None),
        ("staff", "staff-key", "198.51.100.7"),  # staff never verify, even with a key of their own
        ("nobody", "key", "203.0.113.9"),
    ],
)
def test_verify_users_reads_asked_together_answer_as_the_three_asked_one_by_one(demo_data, username, raw_key, address):
    """``verification_check`` against ``apikey_known``, ``verification_locked`` and ``apikey_match``, with
    failures recorded under the username, under a key given as username, in the conversation, from the
    address and from elsewhere, below and at the limits (both backends)."""
    from django.contrib.auth.models import User

    apikey_issue(customer=User.objects.get(username="staff"), raw_key="staff-key")
    conversation_id = uuid.uuid4()
    here = {"conversation_id": conversation_id, "client_address": address}

    def one_by_one() -> tuple[bool, bool, object]:
        is_key = username == raw_key or apikey_known(username)
        name = KEY_AS_USERNAME if is_key else username
        key = None if is_key else apikey_match(username=username, raw_key=raw_key)
        return is_key, verification_locked(username=name, **here), key and (key.pk, key.customer_id)

    def together() -> tuple[bool, bool, object]:
        check = verification_check(username=username, raw_key=raw_key, key_as_username=KEY_AS_USERNAME, **here)
        return check.username_is_key, check.locked, check.key and (check.key.pk, check.key.customer_id)

    failures = [  # each name reaches its limit at a different point
        {"username": KEY_AS_USERNAME, "conversation_id": uuid.uuid4(), "client_address": address},
        {"username": KEY_AS_USERNAME, "conversation_id": uuid.uuid4(), "client_address": address},
        {"username": username, "conversation_id": uuid.uuid4(), "client_address": "192.0.2.1"},  # elsewhere
        {"username": username, "conversation_id": uuid.uuid4(), "client_address": address},
        {"username": "someone", "conversation_id": conversation_id, "client_address": "192.0.2.1"},
        {"username": "someone", "conversation_id": uuid.uuid4(), "client_address": address},
        {"username": username, "conversation_id": uuid.uuid4(), "client_address": address},
    ]
    seen = set()
    with override_settings(VERIFY_MAX_FAILURES=2, VERIFY_MAX_FAILURES_PER_ADDRESS=4):
        assert together() == one_by_one()
        for failure in failures:
            VerificationAttempt.objects.create(succeeded=False, **failure)
            answer = together()
            assert answer == one_by_one(), failure
            seen.add(answer[1])
    old = timezone.now() - timedelta(days=1)
    VerificationAttempt.objects.update(created_at=old)  # all past the lockout window
    assert together() == one_by_one()
    assert not together()[1]
    assert seen == {False, True}, "the failures reached a lock"
