from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
def chat_page(request: HttpRequest) -> HttpResponse:
    """The customer's chat. A session is made first: the conversation belongs to it."""
    # A write makes Django issue a cookie even when the browser sent an expired or made-up one.
    request.session.setdefault("chat", True)
    return render(request, "chat/index.html", {"max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS})
