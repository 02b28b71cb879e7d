"""Reads of tickets, always scoped to their owner and to a verification that still holds."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from tickets.models import Ticket, TicketComment, Verification
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
        created_at__gte=timezone.now() - timedelta(seconds=settings.VERIFY_TTL_SECONDS),
    )


def ticket_get_for_customer(*, public_id: str, customer_id: int, conversation_id: object) -> Ticket | None:
    """The ticket if it exists *and* belongs to the customer, annotated ``holds``: whether the conversation's
    verification as that customer still holds. One query, so another customer's ticket and an unknown one
    look exactly the same."""
    holding = verifications_holding(conversation_id=conversation_id).filter(customer_id=customer_id)
    replies = TicketComment.objects.filter(
        ticket=OuterRef("pk"), author=TicketComment.Author.STAFF, public=True
    ).order_by("-created_at", "-id")
    return (
        Ticket.objects.filter(public_id=public_id, customer_id=customer_id)
        .annotate(
            holds=Exists(holding),
            staff_reply=Subquery(replies.values("text")[:1]),
            staff_reply_at=Subquery(replies.values("created_at")[:1]),
        )
        .first()
    )


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
