"""The chat inside the company's own pages: ``/embed/``, the page ``static/chat/widget.js`` frames.

Only ``/embed/`` may be framed, and only by the origins ``CHAT_WIDGET_ORIGINS`` lists (CSP
``frame-ancestors``; X-Frame-Options is left off there, since it cannot name an origin). Every other page
keeps ``frame-ancestors 'none'`` and ``X-Frame-Options: DENY``. The page talks to its parent only at the
``parent`` origin it was given, and only when that origin is listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.http import require_http_methods

from chat import modelstatus
from chat.models import Conversation


def session_has_conversation(request: HttpRequest) -> bool:
    """Whether the browser's session (one the server made) already holds a conversation; stores nothing."""
    session = request.session
    if not session.get("chat") or session.session_key is None:
        return False
    return Conversation.objects.filter(session_key=session.session_key).exists()


def page_context(request: HttpRequest, *, embed: bool) -> dict[str, Any]:
    """What the chat page needs beyond its own settings: whether its script starts the conversation at once
    (a returning customer's is replayed; a new one starts when the customer writes or opens the widget), the
    parent origin it may talk to, and the model's state for the header."""
    parent = request.GET.get("parent", "") if embed else ""
    opened = embed and request.GET.get("start") == "1"
    return {
        "embed": embed,
        "autostart": opened or session_has_conversation(request),
        "parent_origin": parent if parent in settings.CHAT_WIDGET_ORIGINS else "",
        "model_state": modelstatus.model_state(),
    }


@xframe_options_exempt
@require_http_methods(["GET", "HEAD"])
def chat_embed(request: HttpRequest) -> HttpResponse:
    """The chat page, made to be framed by the listed origins only."""
    context = {"max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS, **page_context(request, embed=True)}
    response = render(request, "chat/index.html", context)
    response._csp_replace = {"frame-ancestors": list(settings.CHAT_WIDGET_ORIGINS) or ["'none'"]}  # type: ignore[attr-defined]
    return response


class PartitionedCookiesMiddleware:
    """Marks the session and CSRF cookies ``Partitioned`` (CHIPS), so browsers that block third-party
    cookies (Chromium, Firefox's total cookie protection) still keep them inside the company's frame: one
    cookie jar per embedding site. Django's ``set_cookie`` cannot say it yet; the attribute rides on
    ``SameSite=None``. Installed (first, so it sees the cookies the others set) only with
    ``CHAT_WIDGET_ORIGINS``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
            morsel = response.cookies.get(name)
            if morsel is not None and str(morsel["samesite"]).lower() == "none":
                morsel["samesite"] = "None; Partitioned"
        return response
