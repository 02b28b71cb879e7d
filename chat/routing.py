from django.urls import path

from chat.consumers import ChatConsumer
from chat.operators.consumers import OperatorConsumer
from chat.operators.inbox_consumers import InboxConsumer, InboxConversationConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/operators/conversations/<uuid:conversation_id>/", OperatorConsumer.as_asgi()),
    path("ws/operators/inbox/", InboxConsumer.as_asgi()),
    path("ws/operators/inbox/<uuid:conversation_id>/", InboxConversationConsumer.as_asgi()),
]
