"""The staff console: ``/operators/inbox/`` (who waits for a person) and one conversation taken over.

Every view is behind ``handler_required`` (the "Support staff" right ``chat.handle_handoff``), checked on
every request from the user as stored now. The actions are POSTs (CSRF-checked): claim, reply, return to
the assistant, close. A page's script sends them with ``Accept: application/json`` and gets JSON back
(409 with ``code`` and ``message`` when refused: someone else claimed it first, or the conversation is not
this staff member's); without a script the forms redirect back. Replies reach the customer through
``chat.handoff`` (stored, masked, then sent on the channel layer).
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from chat import handoff
from chat.models import Holder
from chat.operators.access import handler_required, may_review
from chat.operators.inbox_selectors import held_by, waiting_list
from chat.operators.selectors import conversation_timeline

# C0 controls (but tab and line breaks) and DEL, as refused in the customer's messages.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@require_GET
@handler_required
def inbox(request: HttpRequest) -> HttpResponse:
    context = {
        "nav": "inbox",
        "waiting": waiting_list(),
        "mine": held_by(user_id=request.user.pk),
        "live_path": "/ws/operators/inbox/",
    }
    return render(request, "operators/inbox.html", context)


@require_GET
@handler_required
def inbox_conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    timeline = conversation_timeline(conversation_id=conversation_id)
    if timeline is None:
        raise Http404("No such conversation.")
    conversation = timeline.conversation
    context = {
        "nav": "inbox",
        "timeline": timeline,
        "holder": conversation.holder,
        "holder_name": conversation.holder_staff and handoff.staff_display_name(conversation.holder_staff),
        "mine": conversation.holder == Holder.HUMAN and conversation.holder_staff_id == request.user.pk,
        "can_open_tickets": request.user.has_perm("tickets.view_ticket"),
        "can_review": may_review(request.user),
        "live_path": f"/ws/operators/inbox/{conversation_id}/",
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    return render(request, "operators/inbox_conversation.html", context)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _done(request: HttpRequest, conversation_id: uuid.UUID, frame: dict[str, object]) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": True, "frame": frame})
    return redirect(reverse("operators:inbox-conversation", args=[conversation_id]))


def _refused(request: HttpRequest, refusal: handoff.HandoffRefused, *, back: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": False, "code": refusal.code, "message": refusal.message}, status=409)
    messages.error(request, refusal.message)
    return redirect(back)


@require_POST
@handler_required
def inbox_claim(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    try:
        frame = handoff.handoff_claim(conversation_id=conversation_id, staff=request.user)
    except handoff.HandoffRefused as refusal:
        return _refused(request, refusal, back=reverse("operators:inbox"))
    return _done(request, conversation_id, frame)


def reply_text_error(text: str) -> str | None:
    """Why a staff reply cannot be sent, or None."""
    if not text:
        return "The reply is empty."
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        return f"The reply is too long ({len(text)} characters; at most {settings.CHAT_MAX_MESSAGE_CHARS})."
    if _CONTROL.search(text):
        return "The reply contains control characters."
    return None


@require_POST
@handler_required
def inbox_reply(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    text = (request.POST.get("text") or "").strip()
    back = reverse("operators:inbox-conversation", args=[conversation_id])
    if problem := reply_text_error(text):
        return _refused(request, handoff.HandoffRefused("bad_reply", problem), back=back)
    try:
        frame = handoff.staff_reply(conversation_id=conversation_id, staff=request.user, text=text)
    except handoff.HandoffRefused as refusal:
        return _refused(request, refusal, back=back)
    return _done(request, conversation_id, frame)


def _release(request: HttpRequest, conversation_id: uuid.UUID, *, close: bool) -> HttpResponse:
    back = reverse("operators:inbox-conversation", args=[conversation_id])
    try:
        frame = handoff.handoff_release(conversation_id=conversation_id, staff=request.user, close=close)
    except handoff.HandoffRefused as refusal:
        return _refused(request, refusal, back=back)
    return _done(request, conversation_id, frame)


@require_POST
@handler_required
def inbox_return(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    return _release(request, conversation_id, close=False)


@require_POST
@handler_required
def inbox_close(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    return _release(request, conversation_id, close=True)
