"""Customers the company's website signed in: from the page's POST to a verified conversation.

How the signature travels: the website's page gives the widget the username and its signature
(``tickets.signatures``); the widget puts them in the chat frame's URL *fragment* (never sent to a server,
so never in an access log or a Referer); the chat page's script sends them in the body of its
CSRF-checked ``POST /`` that makes the browser session, before any socket opens. A valid signature is
remembered in the session (``SESSION_KEY``); the socket then verifies the conversation for that customer
server-side, exactly as ``verify_user`` does (``tickets.models.Verification``, the lockout, revocation and
expiry rules), and stores a system note (``SIGNED_IN_NOTE``) so the model greets them by name.

A forged, replayed (another username's) or missing signature changes nothing and is logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.base import SessionBase
from django.db import transaction

from chat import services
from chat.models import Conversation
from chat.prompts import SIGNED_IN_NOTE
from tickets.selectors import verifications_holding
from tickets.services import verification_attempt_record, verification_locked, verification_record_signed
from tickets.signatures import current_signer, signed_customer

logger = logging.getLogger(__name__)

SESSION_KEY = "chat_signed_in"


def session_sign_in(*, session: SessionBase, username: str, signature: str) -> bool:
    """Remember the customer a valid signature vouches for; True if it was valid.

    A customer other than the one the session holds gets a fresh session (``cycle``: a new key and no
    conversation of the previous customer's). Nothing given: nothing happens. A username without a valid
    signature, or a signature without a username, changes nothing and is logged (the signature never).
    """
    username, signature = username.strip()[:200], signature.strip()[:200]
    if not username and not signature:
        return False
    customer = signed_customer(username=username, signature=signature) if username and signature else None
    if customer is None:
        logger.warning(
            "chat sign-in refused for username %r: %s", username[:150],
            "no signature" if not signature else "no username" if not username else "bad signature or no such customer",
        )
        return False
    held = session.get(SESSION_KEY) or {}
    if held.get("customer_id") != customer.id:
        session.flush()  # another person on this browser: never show them the previous one's conversations
    session[SESSION_KEY] = {
        "customer_id": customer.id,
        "username": customer.username,
        "signer": current_signer(),
        "at": time.time(),
    }
    return True


def session_signed_in(session: SessionBase) -> dict[str, Any] | None:
    """The session's signed-in customer while it holds: made with the current secret, within
    ``VERIFY_TTL_SECONDS`` of the website's last signature."""
    held = session.get(SESSION_KEY)
    if not isinstance(held, dict) or not held.get("signer") or held.get("signer") != current_signer():
        return None
    if time.time() - float(held.get("at", 0)) > settings.VERIFY_TTL_SECONDS:
        return None
    return held


def conversation_sign_in(*, session: SessionBase, conversation: Conversation, client_address: str | None) -> bool:
    """Verify ``conversation`` for the session's signed-in customer, as ``verify_user`` would; True if it
    was verified now. Nothing when the session holds nobody, the conversation is already verified (as
    them, holding; or as someone else), the customer is no longer active, or verification is locked."""
    held = session_signed_in(session)
    if held is None or conversation.customer_id not in (None, held["customer_id"]):
        return False
    customer_id, username = held["customer_id"], held["username"]
    if verifications_holding(conversation_id=conversation.id).filter(customer_id=customer_id).exists():
        return False
    if not User.objects.filter(id=customer_id, is_active=True, is_staff=False, is_superuser=False).exists():
        return False
    where = {"conversation_id": conversation.id, "client_address": client_address}
    if verification_locked(username=username, **where):
        logger.warning("chat sign-in of %r not applied: verification is locked", username)
        return False
    _record_sign_in(conversation.id, customer_id, username, client_address)
    conversation.customer_id = customer_id
    return True


@transaction.atomic
def _record_sign_in(conversation_id: uuid.UUID, customer_id: int, username: str, client_address: str | None) -> None:
    verification_attempt_record(
        username=username, conversation_id=conversation_id, client_address=client_address, succeeded=True
    )
    verification_record_signed(conversation_id=conversation_id, customer_id=customer_id, signer=current_signer())
    services.conversation_verify(conversation_id=conversation_id, customer_id=customer_id)
    services.turns_append(
        conversation_id=conversation_id,
        messages=[{"role": "system", "content": SIGNED_IN_NOTE.format(username=username)}],
    )
