from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.http import require_GET, require_http_methods

from chat import identity, widget


@require_http_methods(["GET", "HEAD", "POST"])
def chat_page(request: HttpRequest) -> HttpResponse:
    """The customer's chat (GET), which stores nothing; the page POSTs here right before it opens its
    socket, and that makes the browser session the conversation belongs to (a WebSocket handshake
    cannot set a cookie). A session the server already holds is kept as it is: the same conversation."""
    if request.method == "POST":
        # Before the session is touched: a newly signed-in customer may get a fresh one (chat.identity).
        identity.session_sign_in(
            session=request.session,
            username=request.POST.get("user", ""),
            signature=request.POST.get("signature", ""),
        )
        # A write makes Django issue a cookie even when the browser sent an expired or made-up one.
        request.session.setdefault("chat", True)
        return HttpResponse(status=204)
    context = {"max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS, **widget.page_context(request, embed=False)}
    return render(request, "chat/index.html", context)


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico on every page, admin included; point them at the chat's icon."""
    return redirect(static("chat/favicon.svg"), permanent=True)
