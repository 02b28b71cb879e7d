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
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, connections
from django.utils import timezone

from chat import services
from chat.models import Conversation, Turn
from chat.runtime import turn_start

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
def test_starting_a_turn_sends_its_statements_in_three_round_trips_besides_begin_and_commit():
    conversation_id = conversation_with_turns(2)
    services.customer_message_wait(conversation_id=conversation_id, text="Where is my ticket?")
    with sent_queries() as sent:
        start = turn_start(conversation_id)
    assert start.customer_text == "Where is my ticket?"
    assert [query.split()[0] for query in sent] == ["BEGIN", "SELECT", "UPDATE", "COMMIT"], sent
    seqs = list(Turn.objects.filter(conversation_id=conversation_id).values_list("seq", "content"))
    assert seqs[-1] == (3, "Where is my ticket?")


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
def test_a_customer_verified_by_key_is_written_in_one_round_trip(demo_data):
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
    writes = [query for query in sent if not query.startswith("SELECT")]
    assert len(writes) == 1, sent  # the key's use, the attempt, the verification, the conversation's customer
    assert not {"BEGIN", "COMMIT"} & set(sent), sent
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
