"""The final database state of one run, read before its data is rolled back; what the judge compares.

To judge a new kind of state (tickets created, comments, a handoff), add a field here, fill it in
``final_state`` and add a check in ``judge.CHECKS`` reading it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from chat.models import Conversation
from tickets.models import Ticket, TicketComment


@dataclass(frozen=True)
class TicketRow:
    status: str
    issue: str
    owner: str


@dataclass(frozen=True)
class FinalState:
    verified_as: str | None
    tickets: dict[str, TicketRow] = field(default_factory=dict)
    created: list[TicketRow] = field(default_factory=list)  # tickets opened from this conversation
    comments: dict[str, list[str]] = field(default_factory=dict)  # ticket id -> comments added from it
    holder: str = "agent"  # chat.models.Holder at the end: "waiting" once handed off to the queue
    handed_off: bool = False  # the conversation went to (or asked for) a person at some point


def final_state(*, conversation_id: uuid.UUID, ticket_ids: list[str]) -> FinalState:
    """Who the conversation is verified as, and the rows of the tickets the scenario asks about."""
    conversation = Conversation.objects.select_related("customer").get(id=conversation_id)
    tickets = {
        ticket.public_id: TicketRow(ticket.status, ticket.issue, ticket.customer.username)
        for ticket in Ticket.objects.filter(public_id__in=ticket_ids).select_related("customer")
    }
    created = [
        TicketRow(ticket.status, ticket.issue, ticket.customer.username)
        for ticket in Ticket.objects.filter(conversation_id=conversation_id).select_related("customer")
    ]
    comments: dict[str, list[str]] = {}
    for public_id, text in TicketComment.objects.filter(conversation_id=conversation_id).values_list(
        "ticket__public_id", "text"
    ):
        comments.setdefault(public_id, []).append(text)
    customer = conversation.customer
    return FinalState(
        verified_as=customer.username if customer else None,
        tickets=tickets,
        created=created,
        comments=comments,
        holder=conversation.holder,
        handed_off=conversation.handoff_events.exists(),
    )
