"""Writes to conversations. Short, keyword-only, atomic; called from sync code only."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import operator
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.db import connection, connections, models, transaction
from django.utils import timezone

from chat.compiled import CompiledQuery
from chat.models import Conversation, Turn, WaitingMessage
from chat.prompts import SYSTEM_PROMPT
from chat.secrets import mask_arguments, mask_text, mask_value

Statement = tuple[str, list[Any]]  # SQL and its parameters, to run with others (``statements_run``)


def conversation_start(*, session_key: str, client_address: str | None = None) -> Conversation:
    """A new conversation for the browser session, its system prompt stored as the first turn."""
    conversation = Conversation(session_key=session_key, client_address=client_address)
    system = Turn(conversation=conversation, seq=0, role=Turn.Role.SYSTEM, content=SYSTEM_PROMPT)
    # Written out, as a turn's insert (the ORM's create cost ~4 times the statement): one query on PostgreSQL.
    _, system_ids = statements_run([rows_insert_statement([conversation]), rows_insert_statement([system], "id")])
    (system.pk,) = system_ids[0]
    _saved([conversation, system])
    return conversation


def customer_message_wait(*, conversation_id: uuid.UUID, text: str) -> None:
    """Store a customer message on arrival; a turn takes it with ``turn_take``."""
    statements_run([customer_message_wait_statement(conversation_id=conversation_id, text=text)])


def customer_message_wait_statement(*, conversation_id: uuid.UUID, text: str) -> Statement:
    """``customer_message_wait``'s statement, to run with others (``statements_run``)."""
    return rows_insert_statement([WaitingMessage(conversation_id=conversation_id, text=text)])


def conversation_locked(conversation_id: uuid.UUID) -> Conversation:
    """The conversation, its row locked until the transaction ends: ``select_for_update().get(id=…)``,
    compiled once per database (a turn starts with it). Raises ``DoesNotExist``."""
    return _conversation_from(conversation_id, _CONVERSATION_LOCKED.rows(conversation_id))


def _conversation_from(conversation_id: uuid.UUID, rows: list[Any]) -> Conversation:
    """The conversation of ``_CONVERSATION_LOCKED``'s (converted) rows; ``DoesNotExist`` when none."""
    if not rows:
        raise Conversation.DoesNotExist(f"no conversation {conversation_id}")
    return Conversation.from_db(connection.alias, _CONVERSATION_ATTNAMES, rows[0])


def turn_take(
    conversation_id: uuid.UUID,
    *,
    customer_text: str | None = None,
    reading: CompiledQuery,
    also: Sequence[Statement] = (),
) -> tuple[Conversation, str | None, list[Any]]:
    """Lock the conversation's row, queue ``customer_text`` (when given) behind the messages already waiting,
    run ``also``, take (delete) the oldest waiting message, and read ``reading``'s rows (the turn's history):
    one round trip on PostgreSQL. The conversation, the text taken (None when none waits) and the rows.

    Call inside the transaction that stores the text as a turn, so it is taken exactly once. Raises
    ``DoesNotExist`` for an unknown conversation.
    """
    statements = [_CONVERSATION_LOCKED.statement(conversation_id)]
    if customer_text is not None:
        statements.append(customer_message_wait_statement(conversation_id=conversation_id, text=customer_text))
    statements += [*also, (_WAITING_TAKE, [_pk(conversation_id)]), reading.statement(conversation_id)]
    locked, *_, taken, rows = statements_run(statements)
    conversation = _conversation_from(conversation_id, _CONVERSATION_LOCKED.converted(locked))
    return conversation, (taken[0][0] if taken else None), reading.converted(rows)


def conversation_verify(*, conversation_id: uuid.UUID, customer_id: int) -> None:
    Conversation.objects.filter(id=conversation_id).update(customer_id=customer_id)


def conversation_verify_statement(*, conversation_id: uuid.UUID, customer_id: int) -> Statement:
    """``conversation_verify``'s statement, to run with others (``statements_run``)."""
    return _VERIFY, [customer_id, _pk(conversation_id)]


def turns_append(
    *,
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    tool_results: Mapping[str, tuple[bool, Any]] | None = None,
    new_secrets: Iterable[str] = (),
) -> list[Turn]:
    """Append API-format messages (already masked) in order, as one transaction; ``meta`` (model, latency,
    tokens …) goes on the first.

    ``tool_results`` maps a tool message's ``tool_call_id`` to (failed, what the tool returned), stored
    beside the message. ``new_secrets``, learnt with these messages, join the conversation's digests and
    are masked in the earlier turns that hold them, in the same transaction.
    """
    new_secrets = [secret for secret in new_secrets if secret]
    if new_secrets:  # rare (a verification): the earlier turns are read, to be masked
        with transaction.atomic():  # the row locked and the turns read in one query on PostgreSQL
            locked, earlier = statements_run(
                [_CONVERSATION_LOCKED.statement(conversation_id), _EARLIER_TURNS.statement(conversation_id)]
            )
            conversation = _conversation_from(conversation_id, _CONVERSATION_LOCKED.converted(locked))
            first = _secrets_learnt_statements(conversation, _EARLIER_TURNS.converted(earlier), new_secrets)
            return _turns_create(conversation_id, messages, meta, tool_results, first=first)
    # The touch locks the row first: turns are numbered one append at a time. One query on PostgreSQL.
    return _turns_create(conversation_id, messages, meta, tool_results, first=[_touch_statement(conversation_id)])


def turns_insert(
    *,
    conversation: Conversation,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None = None,
    tool_results: Mapping[str, tuple[bool, Any]] | None = None,
) -> list[Turn]:
    """``turns_append``, without secrets learnt, for a conversation whose row this transaction has already
    locked (a turn's start stores the customer's message with it)."""
    return _turns_create(conversation.id, messages, meta, tool_results, first=[_touch_statement(conversation.id)])


def _turns_create(
    conversation_id: uuid.UUID,
    messages: list[dict[str, Any]],
    meta: dict[str, Any] | None,
    tool_results: Mapping[str, tuple[bool, Any]] | None,
    first: Sequence[Statement] = (),
) -> list[Turn]:
    """Insert the messages as the conversation's next turns, numbered by the insert itself, after the
    statements ``first`` (in one query, and one transaction, with them)."""
    tool_results = tool_results or {}
    tool_names = {
        call["id"]: call["function"]["name"] for message in messages for call in message.get("tool_calls") or []
    }
    turns = []
    for offset, message in enumerate(messages, start=1):
        failed, result = tool_results.get(message.get("tool_call_id", ""), (False, None))
        turns.append(
            Turn(
                conversation_id=conversation_id,
                seq=offset,  # after the last turn: the statement adds the conversation's MAX(seq)
                role=message["role"],
                content=message.get("content") or "",
                tool_calls=message.get("tool_calls"),
                tool_call_id=message.get("tool_call_id", ""),
                name=tool_names.get(message.get("tool_call_id", ""), ""),
                is_error=failed,
                result=result,
                **((meta or {}) if offset == 1 else {}),
            )
        )
    *_, returned = statements_run([*first, rows_insert_statement(turns, returning="id, seq", numbered=True)])
    for turn, (pk, seq) in zip(turns, sorted(returned, key=operator.itemgetter(1)), strict=True):
        turn.pk, turn.seq = pk, seq  # in the order given: their numbers rise with it
    _saved(turns)
    return turns


# THE HOT PATH IN SQL. A turn appends two or three times; the ORM's aggregate, lock-and-fetch, save and
# bulk insert cost 4 to 15 times the statements they send (an indexed MAX: ~270 µs through the ORM, ~16 µs
# as SQL; two turns through ``bulk_create``: ~400 µs), so these few are written out, for the backends this
# project runs on (SQLite >= 3.35 and PostgreSQL: both have RETURNING). Values go through the fields' own
# ``pre_save`` and ``get_db_prep_save``, as the ORM's insert does (``_pk`` for the conversation's id).
_NEXT_SEQ = "SELECT COALESCE(MAX(seq), 0) + 1 FROM chat_turn WHERE conversation_id = %s"
# A turn's number, in its insert: the statement's own snapshot does not see the rows it inserts, so the
# turns of one insert are numbered after the same last turn (PostgreSQL and SQLite alike).
_SEQ_AFTER_LAST = "(SELECT COALESCE(MAX(seq), 0) FROM chat_turn WHERE conversation_id = %s) + %s"
_TOUCH = "UPDATE chat_conversation SET updated_at = %s WHERE id = %s"
_VERIFY = "UPDATE chat_conversation SET customer_id = %s WHERE id = %s"
_WAITING_TAKE = (
    "DELETE FROM chat_waitingmessage WHERE id = "
    "(SELECT MIN(id) FROM chat_waitingmessage WHERE conversation_id = %s) RETURNING text"
)
_MASKED = ("content", "tool_calls", "result")
_TURN_MASKED = "UPDATE chat_turn SET content = %s, tool_calls = %s, result = %s WHERE id = %s"
_SECRETS_KEPT = "UPDATE chat_conversation SET updated_at = %s, secret_digests = %s WHERE id = %s"
_CONVERSATION_ATTNAMES = [field.attname for field in Conversation._meta.concrete_fields]

# The turns a secret learnt may have to be masked in: all but the system prompt, in order (which hold it
# is decided in Python, case-insensitively: no ``icontains`` prefilter to compile per call, or to miss a case).
_EARLIER_TURNS = CompiledQuery(
    lambda conversation_id: Turn.objects.filter(conversation_id=conversation_id)
    .exclude(role=Turn.Role.SYSTEM)
    .order_by("seq")
    .values_list("id", "seq", "role", *_MASKED)
)
_CONVERSATION_LOCKED = CompiledQuery(  # selects every concrete field, in the model's order
    lambda conversation_id: Conversation.objects.select_for_update().filter(id=conversation_id)
)


def statements_run(statements: list[Statement]) -> list[list[tuple[Any, ...]]]:
    """Run the statements in order, as one transaction (or in the caller's), and give each one's rows
    ([] for a statement that returns none).

    On PostgreSQL they are sent as one query: one round trip instead of one each, plus the ``BEGIN`` and
    ``COMMIT`` of a transaction (outside one, the server runs a query of several statements as a single
    transaction). Each statement still reads what the ones before it wrote, and what other transactions
    committed before it began: under READ COMMITTED every statement takes its own snapshot, so a row one
    statement locks is read fresh by the next, as when they go one at a time. SQLite has no round trips to
    save (and takes one statement per call): they run one by one, in a transaction.
    """
    db = connections[connection.alias]
    if db.vendor == "postgresql" and not db.settings_dict["OPTIONS"].get("server_side_binding"):
        with db.cursor() as cursor:  # client-side binding (Django's default): a simple query, many statements
            cursor.execute("; ".join(sql for sql, _ in statements), [p for _, params in statements for p in params])
            results = [cursor.fetchall() if cursor.description else []]
            while cursor.nextset():
                results.append(cursor.fetchall() if cursor.description else [])
        return results
    with transaction.atomic(using=db.alias, savepoint=False), db.cursor() as cursor:
        results = []
        for sql, params in statements:
            cursor.execute(sql, params)
            results.append(cursor.fetchall() if cursor.description else [])
        return results


@functools.cache
def _insert_fields(model: type[models.Model]) -> tuple[Any, ...]:
    """Every column a row of ``model`` is inserted with, in the model's order: all but an id the database
    numbers (a turn's), with an id made here (a conversation's uuid)."""
    return tuple(f for f in model._meta.local_concrete_fields if not (f.primary_key and f.db_returning))


def rows_insert_statement(rows: list[Any], returning: str = "", numbered: bool = False) -> Statement:
    """The statement inserting model instances of one model, as ``bulk_create`` would; ``numbered`` (turns):
    each turn's ``seq`` is its place after the conversation's last turn (``_SEQ_AFTER_LAST``)."""
    model = type(rows[0])
    fields = _insert_fields(model)
    db = connections[connection.alias]  # the proxy costs a context-local lookup per use: 16 per row
    params = []
    for row in rows:
        for field in fields:
            value = field.get_db_prep_save(field.pre_save(row, True), db)
            params.extend((_pk(row.conversation_id), value) if numbered and field.name == "seq" else (value,))
    return _insert_sql(model, db.alias, len(rows), returning, numbered), params


def _saved(rows: Iterable[models.Model]) -> None:
    """Mark instances inserted by hand as the ORM marks those it saves."""
    for row in rows:
        row._state.adding, row._state.db = False, connection.alias


@functools.lru_cache(maxsize=32)
def _insert_sql(model: type[models.Model], alias: str, rows: int, returning: str, numbered: bool = False) -> str:
    quote = connections[alias].ops.quote_name
    fields = _insert_fields(model)
    columns = ", ".join(quote(field.column) for field in fields)
    row = "(" + ", ".join(_SEQ_AFTER_LAST if numbered and f.name == "seq" else "%s" for f in fields) + ")"
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


def _touch_statement(conversation_id: uuid.UUID) -> Statement:
    """Mark the conversation updated, which also locks its row until the transaction ends."""
    now = Conversation._meta.get_field("updated_at").get_db_prep_value(timezone.now(), connection)
    return _TOUCH, [now, _pk(conversation_id)]


def turn_record_error(*, conversation_id: uuid.UUID, code: str, message: str) -> Turn:
    return turns_append(
        conversation_id=conversation_id,
        messages=[{"role": Turn.Role.ERROR, "content": message}],
        meta={"error_code": code},
    )[0]


def secret_digest(value: str) -> str:
    """The keyed digest a conversation keeps of a secret given in it."""
    return hmac.new(settings.SECRET_KEY.encode(), value.encode(), hashlib.sha256).hexdigest()


def _secrets_learnt_statements(conversation: Conversation, earlier: list[Any], secrets: list[str]) -> list[Statement]:
    """The writes that go with secrets learnt: each earlier turn that holds one, masked (``_mask_earlier``),
    and the conversation's digests (``conversation`` is updated to match), touching it as an append does."""
    prep = [(name, Turn._meta.get_field(name).get_db_prep_save) for name in _MASKED]
    statements = [
        (_TURN_MASKED, [*(save(getattr(turn, name), connection) for name, save in prep), turn.pk])
        for turn in _mask_earlier(earlier, secrets)
    ]
    conversation.secret_digests = sorted({*conversation.secret_digests, *map(secret_digest, secrets)})
    conversation.updated_at = timezone.now()
    field = Conversation._meta.get_field
    statements.append((_SECRETS_KEPT, [
        field("updated_at").get_db_prep_save(conversation.updated_at, connection),
        field("secret_digests").get_db_prep_save(conversation.secret_digests, connection),
        _pk(conversation.id),
    ]))
    return statements


def _mask_earlier(earlier: list[Any], secrets: list[str]) -> list[Turn]:
    """The earlier turns (``_EARLIER_TURNS``' rows, in order) changed by masking the secrets, in every role,
    from where each was first given on.

    A secret can only be echoed after it was given (by the customer, or in a tool call's arguments), so
    what stands before that (the greeting asking for an "API key") is left as it was written. Which turns
    hold each secret, and where it was given, is decided here, case-insensitively (a case-insensitive match
    can only move "given" earlier: more is masked, never less); each changed turn is written once.
    """
    turns = [Turn(id=pk, seq=seq, role=role, content=content, tool_calls=calls, result=result)
             for pk, seq, role, content, calls, result in earlier]
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
    return list(changed.values())


def _holds(turn: Turn, secret: str) -> bool:
    return secret.casefold() in turn.content.casefold() or _holds_in(turn.tool_calls, secret) or _holds_in(
        turn.result, secret
    )


def _holds_in(value: Any, secret: str) -> bool:
    """Whether a JSON value holds the secret anywhere, keys and all, as ``icontains`` on its text would."""
    return value is not None and secret.casefold() in json.dumps(value, ensure_ascii=False).casefold()
