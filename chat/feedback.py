"""The customer's rating of their conversation: ``POST /feedback/`` from the chat page.

Only the browser session that owns the conversation may rate it: any other id answers 404, exactly
as an unknown one does. One rating per conversation; rating again replaces it.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Literal

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ConfigDict, StringConstraints

from chat.models import Feedback
from chat.selectors import conversation_for_session

MAX_COMMENT_CHARS = 1000


class FeedbackInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation: uuid.UUID
    rating: Literal["up", "down"]
    comment: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_COMMENT_CHARS)] = ""


@transaction.atomic
def feedback_record(*, session_key: str, conversation_id: uuid.UUID, rating: str, comment: str) -> Feedback | None:
    """Store the session's rating of its conversation; None when the session has no such conversation."""
    conversation = conversation_for_session(session_key=session_key, conversation_id=conversation_id)
    if conversation is None:
        return None
    feedback, _ = Feedback.objects.update_or_create(
        conversation=conversation, defaults={"rating": rating, "comment": comment}
    )
    return feedback


def _json_body(body: bytes) -> object:
    """The decoded body; any failure to decode (deep nesting is a RecursionError) is a ValueError."""
    try:
        return json.loads(body or b"null")
    except Exception as error:
        raise ValueError("not readable JSON") from error


def _bad_request(message: str) -> JsonResponse:
    return JsonResponse({"ok": False, "error": message}, status=400)


@require_POST
def feedback_submit(request: HttpRequest) -> JsonResponse:
    try:
        data = FeedbackInput.model_validate(_json_body(request.body))
    except ValueError:  # pydantic's ValidationError is a ValueError too
        return _bad_request('Send JSON like {"conversation": "<id>", "rating": "up" or "down", "comment": "…"}.')
    if "\x00" in data.comment:
        return _bad_request("The comment contains characters we can't accept.")
    feedback = None
    if request.session.session_key:
        feedback = feedback_record(
            session_key=request.session.session_key,
            conversation_id=data.conversation,
            rating=data.rating,
            comment=data.comment,
        )
    if feedback is None:
        return JsonResponse({"ok": False, "error": "No such conversation."}, status=404)
    return JsonResponse({"ok": True, "rating": feedback.rating, "comment": feedback.comment})


