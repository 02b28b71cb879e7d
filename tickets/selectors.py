"""Reads of tickets, always scoped to their owner and to a verification that still holds."""

from __future__ import annotations

import functools
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Exists, Q, QuerySet
from django.utils import timezone

from tickets.models import ApiKey, Ticket, TicketComment, Verification
from tickets.signatures import current_signer


def verifications_holding(*, conversation_id: object) -> QuerySet[Verification]:
    """The conversation's verifications that still hold: the customer is active, the key that verified
    them is not revoked (or, signed in by the website, the signing secret is still the current one), and it
    was not longer ago than ``VERIFY_TTL_SECONDS``."""
    by_key = Q(api_key__isnull=False, api_key__revoked_at__isnull=True)
    # Signed in by the website: no key to revoke; it holds while the secret that signed it is the current one.
    by_signature = Q(api_key__isnull=True, signer=current_signer() or "-")
    return Verification.objects.filter(
        by_key | by_signature,
        conversation_id=conversation_id,
        customer__is_active=True,
        created_at__gte=_verified_since(),
    )


def ticket_get_for_customer(*, public_id: str, customer_id: int, conversation_id: object) -> Ticket | None:
    """The ticket if it exists *and* belongs to the customer, annotated ``holds``: whether the conversation's
    verification as that customer still holds (the rule of ``verifications_holding``), and its latest public
    staff reply (``staff_reply``, ``staff_reply_at``). One query, so another customer's ticket and an
    unknown one look exactly the same.

    Written out: it runs on every ticket lookup, and the ORM spent ~1.6 ms building and compiling it (an
    ``Exists`` and two ``Subquery``s) to send a ~0.1 ms statement. ``test_ticket_lookup_matches_the_orms_rule``
    holds it to the ORM's statement of the same rule, case by case."""
    verification = Verification._meta
    params = [
        verification.get_field("conversation_id").get_db_prep_value(conversation_id, connection),
        customer_id,
        True,
        verification.get_field("created_at").get_db_prep_value(_verified_since(), connection),
        current_signer() or "-",
        TicketComment.Author.STAFF.value,
        True,
        TicketComment.Author.STAFF.value,
        True,
        public_id,
        customer_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_ticket_lookup_sql(), params)
        row = cursor.fetchone()
    if row is None:
        return None
    *fields, holds, staff_reply, staff_reply_at = row
    ticket = Ticket.from_db(connection.alias, _TICKET_COLUMNS, fields)
    ticket.holds = bool(holds)
    ticket.staff_reply = staff_reply
    ticket.staff_reply_at = _datetime_from_db(staff_reply_at)
    return ticket


_TICKET_COLUMNS = ["id", "public_id", "customer_id", "status", "issue"]  # in the model's field order


def _verified_since() -> object:
    return timezone.now() - timedelta(seconds=settings.VERIFY_TTL_SECONDS)


@functools.cache
def _ticket_lookup_sql() -> str:
    names = {
        "ticket": Ticket._meta.db_table,
        "comment": TicketComment._meta.db_table,
        "verification": Verification._meta.db_table,
        "key": ApiKey._meta.db_table,
        "user": get_user_model()._meta.db_table,
    }
    names = {name: connection.ops.quote_name(table) for name, table in names.items()}
    latest_reply = (
        "(SELECT c.{column} FROM {comment} c WHERE c.ticket_id = t.id AND c.author = %s AND c.public = %s "
        "ORDER BY c.created_at DESC, c.id DESC LIMIT 1)"
    )
    # Table names only are formatted in; every value is a parameter.
    return (
        "SELECT t.id, t.public_id, t.customer_id, t.status, t.issue, "  # noqa: S608
        "EXISTS (SELECT 1 FROM {verification} v INNER JOIN {user} u ON u.id = v.customer_id "
        "LEFT OUTER JOIN {key} k ON k.id = v.api_key_id "
        "WHERE v.conversation_id = %s AND v.customer_id = %s AND u.is_active = %s AND v.created_at >= %s "
        "AND ((v.api_key_id IS NOT NULL AND k.revoked_at IS NULL) OR (v.api_key_id IS NULL AND v.signer = %s))), "
        + latest_reply.replace("{column}", "text") + ", " + latest_reply.replace("{column}", "created_at") + " "
        "FROM {ticket} t WHERE t.public_id = %s AND t.customer_id = %s"
    ).format(**names)


def _datetime_from_db(value: object) -> object:
    """A datetime column read by hand, as the ORM would convert it (SQLite returns text)."""
    column = TicketComment._meta.get_field("created_at").get_col(TicketComment._meta.db_table)
    for converter in connection.ops.get_db_converters(column) + column.get_db_converters(connection):
        value = converter(value, column, connection)
    return value


def verification_holds(*, customer_id: int, conversation_id: object) -> bool:
    return verifications_holding(conversation_id=conversation_id).filter(customer_id=customer_id).exists()


def tickets_for_customer(
    *, customer_id: int, conversation_id: object, status: str | None, limit: int
) -> list[Ticket]:
    """The customer's tickets, newest activity first, at most ``limit`` + 1 (so the caller knows there
    are more) — and none at all unless the conversation's verification as them still holds: ownership and
    verification in the one query."""
    holding = verifications_holding(conversation_id=conversation_id).filter(customer_id=customer_id)
    tickets = Ticket.objects.filter(Exists(holding), customer_id=customer_id)
    if status is not None:
        tickets = tickets.filter(status=status)
    return list(tickets.order_by("-updated_at", "-id")[: limit + 1])


def tickets_created_since(*, customer_id: int, since: object) -> int:
    """Tickets the customer opened through the chat since ``since`` (staff's own are not counted)."""
    return Ticket.objects.filter(customer_id=customer_id, conversation_id__isnull=False, created_at__gte=since).count()
