"""The functions the model may call. Authorization lives here, in code, never in the prompt."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, SecretStr

from chat.services import conversation_verify
from chat.toolbox import ToolContext
from tickets.selectors import ticket_get_for_customer
from tickets.services import customer_authenticate, verification_attempt_record, verification_locked

NOT_VERIFIED = (
    "The customer is not verified yet. Ask for their username and API key, then call verify_user."
)
LOCKED = "Too many failed attempts. Verification is paused for a while; ask the customer to try again later."
_TICKET_ID = re.compile(r"^#?\s*([0-9]{1,20})$", re.ASCII)


def verify_user(
    context: ToolContext,
    username: Annotated[str, Field(description="The customer's username.", min_length=1, max_length=150)],
    api_key: Annotated[SecretStr, Field(description="The API key the customer gave.", min_length=1, max_length=256)],
) -> dict[str, Any]:
    """Verify the customer's identity with their username and API key; needed before ticket lookups."""
    where = {"conversation_id": context.conversation_id, "client_address": context.client_address}
    if verification_locked(username=username, **where):
        return {"success": False, "error": LOCKED}
    customer = customer_authenticate(username=username, raw_key=api_key.get_secret_value())
    verification_attempt_record(username=username, succeeded=customer is not None, **where)
    if customer is None:
        return {"success": False}
    conversation_verify(conversation_id=context.conversation_id, customer_id=customer.id)
    context.customer_id = customer.id
    return {"success": True}


def get_ticket_status(
    context: ToolContext,
    ticket_id: Annotated[str, Field(description="The ticket's ID, e.g. 12345.", min_length=1, max_length=40)],
) -> dict[str, Any]:
    """Get the status and issue of one of the verified customer's tickets by its ticket ID."""
    if context.customer_id is None:
        return {"error": NOT_VERIFIED}
    match = _TICKET_ID.match(ticket_id)
    ticket = match and ticket_get_for_customer(public_id=match.group(1), customer_id=context.customer_id)
    if not ticket:
        return {"error": f"No ticket {ticket_id} was found for this customer."}
    return {"ticket_id": ticket.public_id, "status": ticket.status, "issue": ticket.issue}
