from django.urls import path

from chat.consumers import ChatConsumer
from chat.review_consumers import OperatorConsumer

websocket_urlpatterns = [
    path("ws/chat/", ChatConsumer.as_asgi()),
    path("ws/operators/conversations/<uuid:conversation_id>/", OperatorConsumer.as_asgi()),
]
