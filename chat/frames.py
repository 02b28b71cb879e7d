"""The frames a browser may send, validated before anything acts on them."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, StrictBool, StringConstraints, ValidationError

from chat.protocol import CustomerError

# C0 controls (but tab and line breaks) and DEL: nothing a customer types, something to confuse logs and pages.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")



def _refusal(code: str, message: str) -> CustomerError:
    return CustomerError(code, message, refused=True)


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"]
    text: Annotated[str, StringConstraints(strip_whitespace=True)]


class HumanFrame(BaseModel):
    """The customer asks for a person (the page's "Talk to a person")."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["human"]




class ConfirmFrame(BaseModel):
    """The customer's answer to a confirm card: ``{"type": "confirm", "id": "<id>", "approve": true | false}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["confirm"]
    id: uuid.UUID
    approve: StrictBool


def _confirm_frame(data: dict[str, Any]) -> ConfirmFrame:
    try:
        return ConfirmFrame.model_validate(data)
    except ValidationError as error:
        raise _refusal("bad_frame", 'A confirmation needs the card\'s "id" and "approve": true or false.') from error


def parse_client_frame(text: str | None) -> MessageFrame | ConfirmFrame | HumanFrame:
    """The frame in ``text``; raises a refusal (``CustomerError``) a customer can read."""
    if text is None:
        raise _refusal("bad_frame", "Messages must be JSON text, not binary.")
    try:
        data: Any = json.loads(text)
    except Exception as error:  # not only ValueError: deep nesting is a RecursionError, and any is a refusal
        raise _refusal("bad_frame", "That message could not be read: it is not valid JSON.") from error
    if not isinstance(data, dict):
        raise _refusal("bad_frame", 'A message must be a JSON object like {"type": "message", "text": "…"}.')
    if data.get("type") == "confirm":
        return _confirm_frame(data)
    if data.get("type") == "human":
        return HumanFrame(type="human")
    if data.get("type") != "message":
        raise _refusal("unknown_type", f"Unknown message type {str(data.get('type'))[:40]!r}.")
    try:
        frame = MessageFrame.model_validate(data)
    except ValidationError as error:
        raise _refusal("bad_frame", 'A message needs a "text" string.') from error
    if _CONTROL.search(frame.text):
        raise _refusal("bad_text", "Your message contains characters we can't accept.")
    frame.text = frame.text.strip()  # Python's idea of whitespace is wider than the validator's
    if not frame.text:
        raise _refusal("empty_message", "Your message is empty. Please type something first.")
    if len(frame.text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise _refusal(
            "message_too_long",
            f"Your message is too long ({len(frame.text)} characters). Please keep it under "
            f"{settings.CHAT_MAX_MESSAGE_CHARS} characters.",
        )
    return frame
