"""Reads of tickets, always scoped to their owner."""

from __future__ import annotations

from tickets.models import Ticket


def ticket_get_for_customer(*, public_id: str, customer_id: int) -> Ticket | None:
    """The ticket if it exists *and* belongs to the customer: one query, so both look the same."""
    return Ticket.objects.filter(public_id=public_id, customer_id=customer_id).first()
