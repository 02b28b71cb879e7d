"""What a turn costs stays flat as its conversation grows: database queries per step (counted, not timed)
and bytes sent to the model per call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import llm, services
from chat.agent import ModelReply
from chat.models import Conversation, Holder, Turn, WaitingMessage
from chat.runtime import turn_start
from chat.toolbox import get_toolbox
from tests.support.driver import Chat
from tests.support.models import ScriptedModel

pytestmark = pytest.mark.django_db(transaction=True)


def conversation_with(messages: int) -> uuid.UUID:
    """A conversation of ``messages`` customer messages, each answered."""
    conversation = services.conversation_start(session_key=uuid.uuid4().hex, client_address="198.51.100.7")
    rows = []
    for number in range(messages):
        rows += [
            {"role": "user", "content": f"Question number {number:04d}: what is the status of my ticket?"},
            {"role": "assistant", "content": f"Answer number {number:04d}: please give me your ticket ID."},
        ]
    services.turns_append(conversation_id=conversation.id, messages=rows)
    return conversation.id


def queries(action: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        action()
    return len(captured.captured_queries)


def test_starting_a_turn_costs_the_same_queries_at_message_1_10_and_100(settings):
    settings.CHAT_MAX_CUSTOMER_MESSAGES = 200
    counts = {}
    for size in (1, 10, 100):
        conversation_id = conversation_with(size)
        counts[size] = queries(lambda conversation_id=conversation_id: turn_start(conversation_id, "One more thing."))
        assert Turn.objects.filter(conversation_id=conversation_id, role="user").count() == size + 1
    assert counts[1] == counts[10] == counts[100], counts
    assert counts[1] <= 10, counts


def test_storing_a_model_step_costs_the_same_queries_at_message_1_10_and_100():
    counts = {}
    step = [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_ticket_status", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{}"},
    ]
    for size in (1, 10, 100):
        conversation_id = conversation_with(size)
        counts[size] = queries(
            lambda cid=conversation_id: services.turns_append(conversation_id=cid, messages=step)
        )
    assert counts[1] == counts[10] == counts[100], counts
    assert counts[1] <= 6, counts


def test_a_turn_row_keeps_one_index_per_conversation():
    """Each insert of a turn updates every index of the table: the (conversation, seq) unique constraint
    serves every lookup by conversation, so the foreign key has no index of its own beside it."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Turn._meta.db_table)
    by_conversation = sorted(
        tuple(c["columns"])
        for c in constraints.values()
        if (c["index"] or c["unique"]) and c["columns"][:1] == ["conversation_id"]
    )
    assert by_conversation == [("conversation_id", "seq")], by_conversation


def test_a_waiting_message_is_taken_once_in_arrival_order():
    conversation_id = conversation_with(1)
    for text in ("first", "second"):
        services.customer_message_wait(conversation_id=conversation_id, text=text)
    assert turn_start(conversation_id).customer_text == "first"
    assert turn_start(conversation_id, "third").customer_text == "second"
    assert turn_start(conversation_id).customer_text == "third"
    assert turn_start(conversation_id).customer_text is None
    assert not WaitingMessage.objects.exists()
    users = Turn.objects.filter(conversation_id=conversation_id, role="user").order_by("seq")
    assert [turn.content for turn in users][-3:] == ["first", "second", "third"]


class ByteCountingModel(ScriptedModel):
    """Records the size of the request body the ``openai`` backend would send for each call."""

    def __init__(self) -> None:
        super().__init__()
        self.request_bytes: list[int] = []

    async def complete(self, messages, tools, on_delta) -> ModelReply:
        self.request_bytes.append(len(llm.request_body("m", messages, tools, stream=True)))
        return await super().complete(messages, tools, on_delta)


async def test_bytes_sent_to_the_model_per_call_stay_flat_as_the_conversation_grows(settings):
    settings.CHAT_HISTORY_TOKEN_BUDGET = 1000
    settings.CHAT_MAX_CUSTOMER_MESSAGES = 200
    with llm.chat_model_override(ByteCountingModel()) as model:
        chat = await Chat.start()
        for number in range(100):
            await chat.respond(f"Question number {number:04d}: what is the status of my ticket?")
    assert len(model.request_bytes) == 100
    settled = model.request_bytes[50:]  # once the history fills the budget, each request is the same size
    assert max(settled) == min(settled), (min(settled), max(settled))
    schemas = len(json.dumps(get_toolbox().schemas))
    assert max(model.request_bytes) <= 4 * 1000 + schemas + 2000  # the budget (chars / 4), the schemas, JSON framing
    stored = await database_sync_to_async(Turn.objects.filter(conversation_id=chat.id, role="user").count)()
    assert stored == 100  # trimmed for the model, never in the database


def test_the_request_body_is_what_create_would_send():
    messages = [{"role": "system", "content": "Be helpful."}, {"role": "user", "content": "Héllo \u2028"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    import json

    body = json.loads(llm.request_body("gpt-x", messages, tools, stream=True))
    assert body == {
        "model": "gpt-x", "temperature": 0, "stream": True, "stream_options": {"include_usage": True},
        "tools": tools, "messages": messages,
    }
    assert json.loads(llm.request_body("gpt-x", messages, [], stream=False)) == {
        "model": "gpt-x", "temperature": 0, "messages": messages,
    }


def test_the_locked_fetch_gives_the_orms_row_and_refuses_an_unknown_id():
    conversation_id = conversation_with(1)
    Conversation.objects.filter(id=conversation_id).update(
        customer_id=User.objects.create(username="ann").id, secret_digests=["ab" * 32], holder=Holder.WAITING
    )
    expected = Conversation.objects.get(id=conversation_id)
    with transaction.atomic():
        locked = services.conversation_locked(conversation_id)
    assert {f.attname: getattr(locked, f.attname) for f in Conversation._meta.concrete_fields} == {
        f.attname: getattr(expected, f.attname) for f in Conversation._meta.concrete_fields
    }
    assert locked.secret_digests == ["ab" * 32] and locked.created_at.tzinfo is not None
    with transaction.atomic(), pytest.raises(Conversation.DoesNotExist):
        services.conversation_locked(uuid.uuid4())


def test_a_started_conversation_is_the_row_the_orms_create_would_store():
    """``conversation_start`` writes its row as one written-out insert: read back, it is what the ORM's
    ``create`` with the same arguments stores, but for the id, the session and the times."""
    started = services.conversation_start(session_key="s1", client_address="203.0.113.9")
    by_orm = Conversation.objects.create(session_key="s2", client_address="203.0.113.9")
    stored, reference = Conversation.objects.get(id=started.id), Conversation.objects.get(id=by_orm.id)
    differ = {"id", "session_key", "created_at", "updated_at"}
    fields = [f.attname for f in Conversation._meta.concrete_fields]
    assert {f: getattr(stored, f) for f in fields if f not in differ} == {
        f: getattr(reference, f) for f in fields if f not in differ
    }
    assert {f: getattr(started, f) for f in fields} == {f: getattr(stored, f) for f in fields}
    assert stored.session_key == "s1" and stored.created_at.tzinfo is not None and not started._state.adding
    assert list(stored.turns.values_list("seq", "role")) == [(0, "system")]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite locks the whole database instead")
def test_the_locked_fetch_holds_the_row_until_the_transaction_ends():
    import psycopg

    conversation_id = conversation_with(1)
    settings = connection.settings_dict
    other = psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"],
        password=settings["PASSWORD"] or None, autocommit=True,
    )
    steal = "SELECT 1 FROM chat_conversation WHERE id = %s FOR UPDATE NOWAIT"
    with other:
        with transaction.atomic():
            services.conversation_locked(conversation_id)
            with pytest.raises(psycopg.errors.LockNotAvailable):
                other.execute(steal, [conversation_id])
        assert other.execute(steal, [conversation_id]).fetchone() == (1,)


def test_a_message_superseding_a_card_is_one_written_out_update():
    from chat.confirmations import confirmations_supersede
    from chat.models import Confirmation

    conversation_id = conversation_with(1)
    card = Confirmation.objects.create(
        conversation_id=conversation_id, tool_call_id="call_1", tool="create_ticket", frame={},
        expires_at=timezone.now(),
    )
    assert queries(lambda: confirmations_supersede(conversation_id=conversation_id)) == 1
    card.refresh_from_db()
    assert card.state == Confirmation.State.SUPERSEDED and card.decided_at is not None
    assert confirmations_supersede(conversation_id=conversation_id) is False, "none pending any more"


def test_a_compiled_query_runs_the_orms_sql_per_conversation_and_refuses_any_other_varying_parameter():
    from chat.compiled import CompiledQuery

    first, second = conversation_with(2), conversation_with(3)
    contents = CompiledQuery(
        lambda cid: Turn.objects.filter(conversation_id=cid).order_by("seq").values_list("content")
    )
    for conversation_id in (first, second, first):
        expected = [list(row) for row in Turn.objects.filter(conversation_id=conversation_id).order_by("seq")
                    .values_list("content")]
        assert queries(lambda cid=conversation_id: contents.rows(cid)) == 1
        assert contents.rows(conversation_id) == expected and len(expected) > 1
    assert contents.rows(uuid.uuid4()) == []

    with pytest.raises(ValueError, match="only varying parameter"):
        CompiledQuery(lambda cid: Turn.objects.filter(conversation_id=cid, created_at__lte=timezone.now())).rows(first)
    with pytest.raises(ValueError, match="only varying parameter"):
        CompiledQuery(lambda cid: Turn.objects.filter(role="user")).rows(first)


def test_a_served_process_never_walks_the_loaded_app_again_and_collects_young_objects_less_often():
    """What daphne (or any ASGI server) loading ``supportsite.asgi`` gets: the app it loaded is frozen out
    of the garbage collector's passes, and young collections come every 10 000 allocations, not 700."""
    shown = subprocess.run(
        [sys.executable, "-c", "import gc, supportsite.asgi; print(gc.get_freeze_count(), *gc.get_threshold())"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, check=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "supportsite.settings"},
    )
    frozen, young, *_ = map(int, shown.stdout.split())
    assert frozen > 50_000  # Django, Channels, the project: the loaded app
    assert young == 10_000
