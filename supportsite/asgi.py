"""ASGI entry point: ``daphne supportsite.asgi:application``.

First the client's address is settled (``supportsite.proxies``: forwarded headers only from trusted
proxies). HTTP goes to Django; WebSockets pass the origin check, then the session and auth
middleware, then the chat routes.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "supportsite.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs the app registry loaded
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from supportsite.proxies import TrustedProxyMiddleware  # noqa: E402

application = TrustedProxyMiddleware(
    ProtocolTypeRouter(
        {
            "http": django_asgi_app,
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )
)
