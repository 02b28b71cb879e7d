"""The session engine (``SESSION_ENGINE``): Django's database sessions, without a query before each new key.

Django draws a new session's key and then asks the database whether it is taken, before saving it with
``must_create``, whose ``INSERT`` fails on a taken key anyway (and ``create`` then draws another). Every
customer's first socket makes a session, so that question was a query per new conversation (~1.3 % of
the server's CPU under the benchmark) for a collision of 32 random characters out of 36 (~165 bits).

Nor is a new session's single ``INSERT`` wrapped in a transaction of its own when none is open: Django's
``save`` opens one so that a refused key does not break the caller's transaction, but outside one the
statement is its own transaction on the server, and on PostgreSQL the ``BEGIN`` and ``COMMIT`` would be
two more round trips before a customer's first socket is answered.
"""

from __future__ import annotations

from django.contrib.sessions.backends.base import VALID_KEY_CHARS, CreateError
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import IntegrityError, router, transaction
from django.utils.crypto import get_random_string


class SessionStore(DatabaseSessionStore):
    def _get_new_session_key(self) -> str:
        return get_random_string(32, VALID_KEY_CHARS)  # a taken key fails the INSERT; Django draws again

    def save(self, must_create: bool = False) -> None:
        using = router.db_for_write(self.model)
        if not must_create or self.session_key is None or transaction.get_connection(using).in_atomic_block:
            return super().save(must_create)
        row = self.create_model_instance(self._get_session(no_load=True))
        try:
            row.save(force_insert=True, using=using)  # one statement, its own transaction
        except IntegrityError as taken:
            raise CreateError from taken
        return None
