"""The frames a browser may send, validated before anything acts on them."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

# C0 controls (but tab and line breaks) and DEL: nothing a customer types, something to confuse logs and pages.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class FrameError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MessageFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"]
    text: Annotated[str, StringConstraints(strip_whitespace=True)]


def parse_client_frame(text: str | None) -> MessageFrame:
    """The frame in ``text``, or a ``FrameError`` a customer can read."""
    if text is None:
        raise FrameError("bad_frame", "Messages must be JSON text, not binary.")
    try:
        data: Any = json.loads(text)
    except ValueError as error:
        raise FrameError("bad_frame", "That message could not be read: it is not valid JSON.") from error
    if not isinstance(data, dict):
        raise FrameError("bad_frame", 'A message must be a JSON object like {"type": "message", "text": "…"}.')
    if data.get("type") != "message":
        raise FrameError("unknown_type", f"Unknown message type {str(data.get('type'))[:40]!r}.")
    try:
        frame = MessageFrame.model_validate(data)
    except ValidationError as error:
        raise FrameError("bad_frame", 'A message needs a "text" string.') from error
    if _CONTROL.search(frame.text):
        raise FrameError("bad_text", "Your message contains characters we can't accept.")
    frame.text = frame.text.strip()  # Python's idea of whitespace is wider than the validator's
    if not frame.text:
        raise FrameError("empty_message", "Your message is empty. Please type something first.")
    if len(frame.text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise FrameError(
            "message_too_long",
            f"Your message is too long ({len(frame.text)} characters). Please keep it under "
            f"{settings.CHAT_MAX_MESSAGE_CHARS} characters.",
        )
    return frame
