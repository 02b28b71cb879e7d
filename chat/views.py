from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_GET


@require_GET
def chat_page(request: HttpRequest) -> HttpResponse:
    """The customer's chat. A session is made first: the conversation belongs to it."""
    # A write makes Django issue a cookie even when the browser sent an expired or made-up one.
    request.session.setdefault("chat", True)
    return render(request, "chat/index.html", {"max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS})


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every page, admin included; point them at the chat's icon."""
    return redirect(static("chat/favicon.svg"), permanent=True)
