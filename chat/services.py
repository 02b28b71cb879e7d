"""Writes to conversations. Short, keyword-only, atomic; called from sync code only."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import operator
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.db import connection, connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from chat.compiled import CompiledQuery
from chat.models import Conversation, Turn, WaitingMessage
from chat.prompts import SYSTEM_PROMPT
from chat.secrets import mask_arguments, mask_text, mask_value


@transaction.atomic
def conversation_start(*, session_key: str, client_address: str | None = None) -> Conversation:
    """A new conversation for the browser session, its system prompt stored as the first turn."""
    conversation = Conversation(session_key=session_key, client_address=client_address)
    _rows_insert([conversation])  # written out, as a turn's insert: the ORM's create cost ~4 times the statement
    _turns_insert_rows([Turn(conversation=conversation, seq=0, role=Turn.Role.SYSTEM, content=SYSTEM_PROMPT)])
    return conversation


def customer_message_wait(*, conversation_id: uuid.UUID, text: str) -> None:
    """Store a customer message on arrival; a turn takes it with ``waiting_message_take``."""
    _rows_insert([WaitingMessage(conversation_id=conversation_id, text=text)])  # every message: written out


def conversation_locked(conversation_id: uuid.UUID) -> Conversation:
    """The conversation, its row locked until the transaction ends: ``select_for_update().get(id=…)``,
    compiled once per database (a turn starts with it). Raises ``DoesNotExist``."""
    rows = _CONVERSATION_LOCKED.rows(conversation_id)
    if not rows:
        raise Conversation.DoesNotExist(f"no conversation {conversation_id}")
    return Conversation.from_db(connection.alias, _CONVERSATION_ATTNAMES, rows[0])


def waiting_message_take(*, conversation: Conversation) -> str | None:
    """Delete the conversation's oldest waiting message and return its text (None when none waits).

    Call inside the transaction that locked the conversation's row and stores the text as a turn, so it is
    taken exactly once.
    """
    with connection.cursor() as cursor:
        cursor.execute(_WAITING_TAKE, [_pk(conversation.id)])
        row = cursor.fetchone()
    return row[0] if row else None


def conversation_verify(*, conversation_id: uuid.UUID, customer_id: int) -> None:
    Conversation.objects.filter(id=conversation_id).update(customer_id=customer_id)


@transaction.atomic
def turns_append(
    *,
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    tool_results: Mapping[str, tuple[bool, Any]] | None = None,
    new_secrets: Iterable[str] = (),
) -> list[Turn]:
    """Append API-format messages (already masked) in order; ``meta`` (model, latency, tokens …) goes on
    the first.

    ``tool_results`` maps a tool message's ``tool_call_id`` to (failed, what the tool returned), stored
    beside the message. ``new_secrets``, learnt with these messages, join the conversation's digests and
    are masked in the earlier turns that hold them, in the same transaction.
    """
    new_secrets = [secret for secret in new_secrets if secret]
    if new_secrets:  # rare: the row itself is needed
        conversation = conversation_locked(conversation_id)
        return turns_insert(
            conversation=conversation, messages=messages, meta=meta, tool_results=tool_results,
            new_secrets=new_secrets,
        )
    _conversation_touch(conversation_id)  # locks the row first: turns are numbered one append at a time
    return _turns_create(conversation_id, messages, meta, tool_results)


def turns_insert(
    *,
    conversation: Conversation,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    tool_results: Mapping[str, tuple[bool, Any]] | None = None,
    new_secrets: Iterable[str] = (),
) -> list[Turn]:
    """``turns_append`` for a conversation whose row this transaction has already locked."""
    new_secrets = [secret for secret in new_secrets if secret]
    if new_secrets:
        _mask_earlier_turns(conversation, new_secrets)
        conversation.secret_digests = sorted({*conversation.secret_digests, *map(secret_digest, new_secrets)})
        conversation.save(update_fields=["updated_at", "secret_digests"])
    else:
        _conversation_touch(conversation.id)
    return _turns_create(conversation.id, messages, meta, tool_results)


def _turns_create(
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None,
    tool_results: Mapping[str, tuple[bool, Any]] | None,
) -> list[Turn]:
    tool_results = tool_results or {}
    seq = turn_next_seq(conversation_id)
    tool_names = {
        call["id"]: call["function"]["name"] for message in messages for call in message.get("tool_calls") or []
    }
    turns = []
    for offset, message in enumerate(messages):
        failed, result = tool_results.get(message.get("tool_call_id", ""), (False, None))
        turns.append(
            Turn(
                conversation_id=conversation_id,
                seq=seq + offset,
                role=message["role"],
                content=message.get("content") or "",
                tool_calls=message.get("tool_calls"),
                tool_call_id=message.get("tool_call_id", ""),
                name=tool_names.get(message.get("tool_call_id", ""), ""),
                is_error=failed,
                result=result,
                **((meta or {}) if offset == 0 else {}),
            )
        )
    _turns_insert_rows(turns)
    return turns


# THE HOT PATH IN SQL. A turn appends two or three times; the ORM's aggregate, lock-and-fetch, save and
# bulk insert cost 4 to 15 times the statements they send (an indexed MAX: ~270 µs through the ORM, ~16 µs
# as SQL; two turns through ``bulk_create``: ~400 µs), so these few are written out, for the backends this
# project runs on (SQLite >= 3.35 and PostgreSQL: both have RETURNING). Values go through the fields' own
# ``pre_save`` and ``get_db_prep_save``, as the ORM's insert does (``_pk`` for the conversation's id).
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM chat_turn WHERE conversation_id = %s"
_TOUCH = "UPDATE chat_conversation SET updated_at = %s WHERE id = %s"
_WAITING_TAKE = (
    "DELETE FROM chat_waitingmessage WHERE id = "
    "(SELECT MIN(id) FROM chat_waitingmessage WHERE conversation_id = %s) RETURNING text"
)
_CONVERSATION_ATTNAMES = [field.attname for field in Conversation._meta.concrete_fields]

_CONVERSATION_LOCKED = CompiledQuery(  # selects every concrete field, in the model's order
    lambda conversation_id: Conversation.objects.select_for_update().filter(id=conversation_id)
)


@functools.cache
def _insert_fields(model: type[models.Model]) -> tuple[Any, ...]:
    """Every column a row of ``model`` is inserted with, in the model's order: all but an id the database
    numbers (a turn's), with an id made here (a conversation's uuid)."""
    return tuple(f for f in model._meta.local_concrete_fields if not (f.primary_key and f.db_returning))


def _rows_insert(rows: list[Any], returning: str = "") -> list[tuple[Any, ...]]:
    """Insert model instances of one model in one statement, as ``bulk_create`` would; what
    ``returning`` names comes back, one tuple per row, in no promised order."""
    model = type(rows[0])
    fields = _insert_fields(model)
    db = connections[connection.alias]  # the proxy costs a context-local lookup per use: 16 per row
    params = [field.get_db_prep_save(field.pre_save(row, True), db) for row in rows for field in fields]
    with db.cursor() as cursor:
        cursor.execute(_insert_sql(model, db.alias, len(rows), returning), params)
        returned = cursor.fetchall() if returning else []
    for row in rows:
        row._state.adding, row._state.db = False, db.alias
    return returned


def _turns_insert_rows(turns: list[Turn]) -> None:
    """Insert the turns in one statement and give each its id."""
    ids = {seq: pk for pk, seq in _rows_insert(turns, returning="id, seq")}  # matched by seq
    for turn in turns:
        turn.pk = ids[turn.seq]


@functools.lru_cache(maxsize=32)
def _insert_sql(model: type[models.Model], alias: str, rows: int, returning: str) -> str:
    quote = connections[alias].ops.quote_name
    fields = _insert_fields(model)
    columns = ", ".join(quote(field.column) for field in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608 - names only
        f"VALUES {', '.join([row] * rows)}" + (f" RETURNING {returning}" if returning else "")
    )


def _pk(conversation_id: uuid.UUID) -> Any:
    return Conversation._meta.pk.get_db_prep_value(conversation_id, connection)


def turn_next_seq(conversation_id: uuid.UUID) -> int:
    """The number of the conversation's next turn; call with its row locked."""
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_SEQ, [_pk(conversation_id)])
        return cursor.fetchone()[0]


def _conversation_touch(conversation_id: uuid.UUID) -> None:
    """Mark the conversation updated, which also locks its row until the transaction ends."""
    now = Conversation._meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection)
    with connection.cursor() as cursor:
        cursor.execute(_TOUCH, [now, _pk(conversation_id)])


def turn_record_error(*, conversation_id: uuid.UUID, code: str, message: str) -> Turn:
    return turns_append(
        conversation_id=conversation_id,
        messages=[{"role": Turn.Role.ERROR, "content": message}],
        meta={"error_code": code},
    )[0]


def secret_digest(value: str) -> str:
    """The keyed digest a conversation keeps of a secret given in it."""
    return hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def _mask_earlier_turns(conversation: Conversation, secrets: list[str]) -> None:
    """Mask the secrets in every earlier turn, of every role, from where each was first given on.

    A secret can only be echoed after it was given (by the customer, or in a tool call's arguments), so
    what stands before that (the greeting asking for an "API key") is left as it was written. One query
    reads the turns that may hold any of the secrets; which hold each one, and where it was given, is
    decided here, case-insensitively (a case-insensitive match can only move "given" earlier: more is
    masked, never less), and each changed turn is written once.
    """
    may_hold = functools.reduce(
        operator.or_,
        (Q(content__icontains=s) | Q(tool_calls__icontains=s) | Q(result__icontains=s) for s in secrets),
    )
    turns = list(conversation.turns.filter(may_hold).exclude(role=Turn.Role.SYSTEM).order_by("seq"))
    changed: dict[int, Turn] = {}
    for secret in secrets:
        holding = [turn for turn in turns if _holds(turn, secret)]
        given = next((t for t in holding if t.role == Turn.Role.USER or _holds_in(t.tool_calls, secret)), None)
        for turn in holding:
            if given is not None and turn.seq < given.seq:
                continue
            turn.content = mask_text(turn.content, [secret])
            if turn.tool_calls:
                turn.tool_calls = [
                    {**call, "function": {**call["function"],
                                          "arguments": mask_arguments(call["function"]["arguments"], [secret])}}
                    for call in turn.tool_calls
                ]
            turn.result = mask_value(turn.result, [secret])
            changed[turn.pk] = turn
    for turn in changed.values():
        turn.save(update_fields=["content", "tool_calls", "result"])


def _holds(turn: Turn, secret: str) -> bool:
    return secret.casefold() in turn.content.casefold() or _holds_in(turn.tool_calls, secret) or _holds_in(
        turn.result, secret
    )


def _holds_in(value: Any, secret: str) -> bool:
    """Whether a JSON value holds the secret anywhere, keys and all, as ``icontains`` on its text would."""
    return value is not None and secret.casefold() in json.dumps(value, ensure_ascii=False).casefold()
