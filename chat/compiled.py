"""Querysets a turn runs every time, compiled by the ORM once per database and run again for each conversation.

The ORM builds and compiles a queryset's SQL each time it is evaluated: ~200 µs for a plain filter on this
project's machines, for a statement the database answers in a few tens. A turn starts with the same
statements every time, differing only in the conversation's id. A ``CompiledQuery`` compiles its queryset
on first use (per database alias, inside the caller's transaction, as ``FOR UPDATE`` needs), checks that
the conversation's id is the only parameter that varies, and from then on runs the ORM's own SQL with the
ORM's own converters for its rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from chat.models import Conversation

_PLACEHOLDERS = (uuid.UUID(int=1), uuid.UUID(int=2))


def _prepared(conversation_id: uuid.UUID) -> Any:
    return Conversation._meta.pk.get_db_prep_value(conversation_id, connection)


class CompiledQuery:
    """``build(conversation_id)``'s SQL, compiled once per database; ``rows`` runs it for a conversation."""

    def __init__(self, build: Callable[[uuid.UUID], QuerySet[Any]]) -> None:
        self.build = build
        self._statements: dict[str, tuple[str, list[Any], int, Any, dict[int, Any]]] = {}

    def _statement(self) -> tuple[str, list[Any], int, Any, dict[int, Any]]:
        statement = self._statements.get(connection.alias)
        if statement is None:
            compiled = []
            for placeholder in _PLACEHOLDERS:
                compiler = self.build(placeholder).query.get_compiler(connection.alias)
                sql, params = compiler.as_sql()
                compiled.append((sql, list(params), compiler))
            (sql, params, compiler), (other_sql, other_params, _) = compiled
            varying = [i for i, (a, b) in enumerate(zip(params, other_params, strict=True)) if a != b]
            if other_sql != sql or len(varying) != 1 or params[varying[0]] != _prepared(_PLACEHOLDERS[0]):
                raise ValueError(f"the conversation's id must be the only varying parameter of: {sql}")
            # Kept with the compiler (and the connection of the thread that compiled it): the converters only
            # turn values into Python objects (UUIDs, datetimes, JSON) and never use that connection's socket.
            converters = compiler.get_converters([expression for expression, _, _ in compiler.select])
            statement = self._statements[connection.alias] = (sql, params, varying[0], compiler, converters)
        return statement

    def statement(self, conversation_id: uuid.UUID) -> tuple[str, list[Any]]:
        """The SQL and parameters for this conversation, to run with other statements (``converted`` its rows)."""
        sql, params, position, _, _ = self._statement()
        params = [*params]
        params[position] = _prepared(conversation_id)
        return sql, params

    def converted(self, rows: list[tuple[Any, ...]]) -> list[Any]:
        """Rows as the database gave them, as the ORM gives them: each a list of its columns' values."""
        _, _, _, compiler, converters = self._statement()
        return list(compiler.apply_converters(rows, converters)) if converters else [list(row) for row in rows]

    def rows(self, conversation_id: uuid.UUID) -> list[Any]:
        """The queryset's rows for this conversation, each a list of its selected columns' values."""
        sql, params = self.statement(conversation_id)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return self.converted(rows)
