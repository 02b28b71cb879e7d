"""The functions the model may call. Authorization lives here, in code, never in the prompt."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from django.conf import settings
from django.utils import timezone
from pydantic import Field, SecretStr

from chat.toolbox import ToolContext, ToolError, changes_data
from tickets.models import Ticket
from tickets.selectors import (
    ticket_get_for_customer,
    tickets_created_since,
    tickets_for_customer,
    verification_holds,
)
from tickets.services import (
    TicketLimitReached,
    ticket_comment_add_for_customer,
    ticket_create_for_customer,
    verification_attempt_record,
    verification_by_key_record,
    verification_check,
)

NOT_VERIFIED = (
    "The customer is not verified yet. Ask for their username and API key, then call verify_user."
)
LOCKED = "Too many failed attempts. Verification is paused for a while; ask the customer to try again later."
KEY_AS_USERNAME = "(an API key)"
_TICKET_ID = re.compile(r"^#?\s*([0-9]{1,20})$", re.ASCII)


def verify_user(
    context: ToolContext,
    username: Annotated[str, Field(description="The customer's username.", min_length=1, max_length=150)],
    api_key: Annotated[SecretStr, Field(description="The API key the customer gave.", min_length=1, max_length=256)],
) -> dict[str, Any]:
    """Verify the customer's identity with their username and API key; needed before ticket lookups."""
    raw_key = api_key.get_secret_value()
    where = {"conversation_id": context.conversation_id, "client_address": context.client_address}
    check = verification_check(username=username, raw_key=raw_key, key_as_username=KEY_AS_USERNAME, **where)
    if check.username_is_key:
        # A key given as the username is a secret like any key: masked, and never kept as a username.
        context.revealed.append(username)
        username = KEY_AS_USERNAME
    if check.locked:
        raise ToolError(LOCKED, details={"success": False})
    if check.key is None:
        verification_attempt_record(username=username, succeeded=False, **where)
        return {"success": False}
    verification_by_key_record(key=check.key, username=username, **where)
    context.customer_id = check.key.customer_id
    return {"success": True}


def get_ticket_status(
    context: ToolContext,
    ticket_id: Annotated[str, Field(description="The ticket's ID, e.g. 12345.", min_length=1, max_length=40)],
) -> dict[str, Any]:
    """Get the status and issue of one of the verified customer's tickets by its ticket ID."""
    if context.customer_id is None:
        raise ToolError(NOT_VERIFIED)
    match = _TICKET_ID.match(ticket_id)
    ticket = match and ticket_get_for_customer(
        public_id=match.group(1), customer_id=context.customer_id, conversation_id=context.conversation_id
    )
    if not ticket:
        raise ToolError(f"No ticket {ticket_id} was found for this customer.")
    if not ticket.holds:
        raise ToolError(NOT_VERIFIED)  # keys rotated, customer deactivated, or verified too long ago
    found: dict[str, Any] = {"ticket_id": ticket.public_id, "status": ticket.status, "issue": ticket.issue}
    if ticket.staff_reply is not None:
        found["latest_staff_reply"] = {"text": ticket.staff_reply, "at": ticket.staff_reply_at.isoformat()}
    return found


# TOOLS THAT CHANGE DATA (run only after the customer's "yes") AND THE LIST


STATUSES = {status.value.lower(): status.value for status in Ticket.Status}
TicketId = Annotated[str, Field(description="The ticket's ID, e.g. 12345.", min_length=1, max_length=40)]


def list_my_tickets(
    context: ToolContext,
    status: Annotated[
        str | None, Field(description=f"Only tickets with this status: {', '.join(STATUSES.values())}.", max_length=40)
    ] = None,
) -> dict[str, Any]:
    """List the verified customer's tickets, newest first, with id, status, issue and last update."""
    if context.customer_id is None:
        raise ToolError(NOT_VERIFIED)
    wanted = None
    if status:
        wanted = STATUSES.get(status.strip().lower().replace("_", " "))
        if wanted is None:
            raise ToolError(f"Unknown status {status!r}. The statuses are: {', '.join(STATUSES.values())}.")
    limit = settings.TICKETS_LIST_MAX
    tickets = tickets_for_customer(
        customer_id=context.customer_id, conversation_id=context.conversation_id, status=wanted, limit=limit
    )
    if not tickets and not verification_holds(customer_id=context.customer_id, conversation_id=context.conversation_id):
        raise ToolError(NOT_VERIFIED)
    return {
        "tickets": [
            {"ticket_id": t.public_id, "status": t.status, "issue": t.issue, "updated_at": t.updated_at.isoformat()}
            for t in tickets[:limit]
        ],
        "more": len(tickets) > limit,
    }


def _verified_customer(context: ToolContext) -> int:
    """The verified customer's id, while the conversation's verification holds; else a ToolError."""
    if context.customer_id is None or not verification_holds(
        customer_id=context.customer_id, conversation_id=context.conversation_id
    ):
        raise ToolError(NOT_VERIFIED)
    return context.customer_id


def _may_create(context: ToolContext, **arguments: Any) -> None:
    customer_id = _verified_customer(context)
    since = timezone.now() - timedelta(days=1)
    if tickets_created_since(customer_id=customer_id, since=since) >= settings.TICKETS_CREATED_PER_DAY:
        raise ToolError(TOO_MANY_TICKETS)


TOO_MANY_TICKETS = "The customer has opened as many tickets today as allowed; suggest adding to an existing one."


@changes_data("Open a new support ticket: \u201c{issue}\u201d", check=_may_create)
def create_ticket(
    context: ToolContext,
    issue: Annotated[str, Field(description="The issue in a few words (a title).", min_length=1, max_length=120)],
    description: Annotated[str, Field(description="The customer's description of the problem.", max_length=4000)] = "",
) -> dict[str, Any]:
    """Open a new support ticket for the verified customer (asks the customer to confirm first)."""
    try:
        ticket = ticket_create_for_customer(
            customer_id=_verified_customer(context),
            conversation_id=context.conversation_id,
            issue=issue,
            description=description,
        )
    except TicketLimitReached as error:
        raise ToolError(TOO_MANY_TICKETS) from error
    if ticket is None:
        raise ToolError(NOT_VERIFIED)
    return {"ticket_id": ticket.public_id, "status": ticket.status, "issue": ticket.issue, "created": True}


def _own_ticket(context: ToolContext, ticket_id: str, **arguments: Any) -> str:
    """The ticket's public id, when it is the verified customer's own; else a ToolError (an unknown ticket
    and another customer's answer alike)."""
    if context.customer_id is None:
        raise ToolError(NOT_VERIFIED)
    match = _TICKET_ID.match(ticket_id)
    ticket = match and ticket_get_for_customer(
        public_id=match.group(1), customer_id=context.customer_id, conversation_id=context.conversation_id
    )
    if not ticket:
        raise ToolError(f"No ticket {ticket_id} was found for this customer.")
    if not ticket.holds:
        raise ToolError(NOT_VERIFIED)
    return ticket.public_id


def _may_comment(context: ToolContext, **arguments: Any) -> None:
    _own_ticket(context, **arguments)


@changes_data("Add your comment to ticket {ticket_id}: \u201c{text}\u201d", check=_may_comment)
def add_ticket_comment(
    context: ToolContext,
    ticket_id: TicketId,
    text: Annotated[str, Field(description="The customer's words to add, as they said them.", min_length=1,
                               max_length=4000)],
) -> dict[str, Any]:
    """Add the customer's comment to one of their tickets, for support staff to read (asks to confirm first)."""
    public_id = _own_ticket(context, ticket_id)
    comment = ticket_comment_add_for_customer(
        public_id=public_id, customer_id=context.customer_id, conversation_id=context.conversation_id, text=text
    )
    if comment is None:
        raise ToolError(NOT_VERIFIED)  # lost between the two queries: rotated keys, deactivated customer
    return {"ticket_id": public_id, "comment_added": True}
