"""A deployer's own tool: the status of one of the verified customer's orders.

Enable it without touching the project's code:  CHAT_EXTRA_TOOLS=shop.tools.get_order_status
"""

from __future__ import annotations

from typing import Annotated, Any

from django.contrib.auth.models import User
from pydantic import Field

from chat.toolbox import ToolContext, ToolError
from tickets.selectors import verification_holds

NOT_VERIFIED = "The customer is not verified yet. Ask for their username and API key, then call verify_user."

# Stands in for your order system (your own models, an HTTP API …): (username, order id) -> order.
ORDERS = {
    ("john_doe", "A-1001"): {"status": "Shipped", "carrier": "DHL", "expected": "2026-11-24"},
    ("jane_roe", "A-2002"): {"status": "Packing", "carrier": None, "expected": "2026-11-27"},
}


def get_order_status(
    context: ToolContext,
    order_id: Annotated[str, Field(description="The order number, e.g. A-1001.", min_length=1, max_length=20)],
) -> dict[str, Any]:
    """Get the status of one of the verified customer's orders by its order number."""
    # Identity comes from the context the server sets, never from the model's arguments.
    if context.customer_id is None or not verification_holds(
        customer_id=context.customer_id, conversation_id=context.conversation_id
    ):
        raise ToolError(NOT_VERIFIED)
    username = User.objects.values_list("username", flat=True).get(pk=context.customer_id)
    wanted = order_id.strip().upper()
    order = ORDERS.get((username, wanted))
    if order is None:  # another customer's order answers exactly like a missing one
        raise ToolError(f"No order {order_id} was found for this customer.")
    return {"order_id": wanted, **order}
