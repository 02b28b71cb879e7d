"""Each run's own clean copy of the data: a transaction opened before the run and rolled back after it.

WHY A TRANSACTION, NOT A TEMPLATE DATABASE
A rolled-back transaction costs nothing to make or drop, works the same on SQLite and PostgreSQL, and
needs no rights to create databases; a template database (PostgreSQL only) costs a ``CREATE DATABASE``
per run. The price: every database access of the run must happen on one connection, so on one thread.
The runner gives each run a ``ThreadSensitiveContext`` of its own, so the runtime's
``database_sync_to_async`` hops all land on that run's thread, where this module opened the transaction.

``chat.db.database_sync_to_async`` calls Django's ``close_old_connections`` around every hop, which
closes a connection that is inside a transaction (its autocommit differs from the settings'), and
would end the run's transaction. ``transactions_survive_hops`` swaps in a version that leaves such
connections alone and treats every other connection exactly as Django does.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.contrib.auth.models import User
from django.db import connection, connections, transaction
from django.db.transaction import Atomic

from chat import db
from chat.evaluation.scenarios import Scenario
from chat.runtime import conversation_attach
from tickets.management.commands.seed_demo import CUSTOMERS as DEMO_CUSTOMERS
from tickets.models import ApiKey, Ticket, VerificationAttempt
from tickets.services import apikey_digest, apikey_issue

CLIENT_ADDRESS = "192.0.2.10"  # TEST-NET-1: no real customer's address
DEMO_KEYS = [raw_key for raw_key, _ in DEMO_CUSTOMERS.values()]


def close_connections_outside_transactions() -> None:
    """Django's ``close_old_connections``, sparing connections inside a transaction (an evaluation run's)."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


@contextmanager
def transactions_survive_hops() -> Iterator[None]:
    original = db.close_old_connections
    db.close_old_connections = close_connections_outside_transactions
    try:
        yield
    finally:
        db.close_old_connections = original


@dataclass
class Sandbox:
    atomic: Atomic
    conversation_id: uuid.UUID
    thread: int  # every database access of the run must happen here, on the transaction's connection

    def check_thread(self) -> None:
        if threading.get_ident() != self.thread:
            raise RuntimeError("an evaluation run's database work left the thread of its transaction")


def sandbox_open(scenario: Scenario) -> Sandbox:
    """Begin the run's transaction, lay out its data and start its conversation (sync, the run's thread)."""
    atomic = transaction.atomic()
    atomic.__enter__()
    try:
        _demo_data_ensure()
        _extras_add(scenario)
        attached = conversation_attach(
            session_key=f"evaluation-{uuid.uuid4().hex[:28]}", client_address=CLIENT_ADDRESS, new=True
        )
    except BaseException:
        transaction.set_rollback(True)
        atomic.__exit__(None, None, None)
        raise
    return Sandbox(atomic, attached.conversation.id, threading.get_ident())


def sandbox_close(sandbox: Sandbox) -> None:
    """Roll the run's data back and close the run thread's connection."""
    sandbox.check_thread()
    transaction.set_rollback(True)
    sandbox.atomic.__exit__(None, None, None)
    connection.close()


def _demo_data_ensure() -> None:
    """``seed_demo``'s customers, keys and tickets exactly as it defines them, whatever the database holds.

    Writes only what differs, so runs on a freshly seeded database take no row locks on shared rows and
    can run side by side (on PostgreSQL). Verification failures left by real traffic are set aside.
    """
    for username, (raw_key, tickets) in DEMO_CUSTOMERS.items():
        customer, _ = User.objects.get_or_create(username=username)
        _key_ensure(customer, raw_key)
        for public_id, status, issue in tickets:
            _ticket_ensure(customer, public_id, status, issue)
    attempts = VerificationAttempt.objects.filter(succeeded=False)
    if attempts.exists():
        attempts.delete()


def _key_ensure(customer: User, raw_key: str) -> None:
    key = ApiKey.objects.filter(digest=apikey_digest(raw_key)).first()
    if key is None:
        apikey_issue(customer=customer, raw_key=raw_key)
    elif key.customer_id != customer.id or key.revoked_at is not None:
        ApiKey.objects.filter(id=key.id).update(customer=customer, revoked_at=None)


def _ticket_ensure(customer: User, public_id: str, status: str, issue: str, description: str = "") -> None:
    wanted = {"customer_id": customer.id, "status": status, "issue": issue, "description": description}
    ticket = Ticket.objects.filter(public_id=public_id).first()
    if ticket is None:
        Ticket.objects.create(public_id=public_id, **wanted)
    elif any(getattr(ticket, name) != value for name, value in wanted.items()):
        Ticket.objects.filter(id=ticket.id).update(**wanted)


def _extras_add(scenario: Scenario) -> None:
    for extra in scenario.setup.customers:
        customer, _ = User.objects.get_or_create(username=extra.username)
        _key_ensure(customer, extra.api_key)
        for ticket in extra.tickets:
            _ticket_ensure(customer, ticket.id, ticket.status, ticket.issue, ticket.description)
