"""The WebSocket routes, below the origin check and the session middleware (``supportsite.asgi``).

Only the operators' sockets need the signed-in user, so only they are behind Channels' ``AuthMiddleware``:
it resolves the user with a database crossing (and a session read) at every handshake, which a customer's
socket, anonymous by design, would pay for nothing.
"""

from channels.auth import AuthMiddleware
from django.urls import path

from chat.consumers import ChatConsumer
from chat.operators.consumers import OperatorConsumer
from chat.operators.inbox_consumers import InboxConsumer, InboxConversationConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/operators/conversations/<uuid:conversation_id>/", AuthMiddleware(OperatorConsumer.as_asgi())),
    path("ws/operators/inbox/", AuthMiddleware(InboxConsumer.as_asgi())),
    path("ws/operators/inbox/<uuid:conversation_id>/", AuthMiddleware(InboxConversationConsumer.as_asgi())),
]
