"""A socket's receive from the channel layer ends with the socket, even when a cancellation is lost.

On Python 3.11 ``asyncio.wait_for`` (which redis-py wraps around every write) loses a cancellation that
arrives as the write completes. A refused or short-lived socket on the Redis layer then left its receive
polling Redis for ever, its consumer never finished, and its socket lease (the per-address count) was
renewed for ever: it hung the PostgreSQL + Redis CI run. ``StubbornLayer`` loses the first cancellation
of every receive the same way, deterministically, on any backend."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer, channel_layers
from channels.testing import WebsocketCommunicator

from chat.sockets import layer_receive_within, tasks_stop
from supportsite.asgi import application
from tests.support.sockets import TIMEOUT, an_address, attached, staff_headers

pytestmark = pytest.mark.django_db(transaction=True)


class StubbornLayer(InMemoryChannelLayer):
    """The in-memory layer, whose receive ignores the first cancellation it gets (as a receive of the
    Redis layer does when Python 3.11's ``wait_for`` loses it) and goes on waiting."""

    lost = 0

    async def receive(self, channel):
        try:
            return await super().receive(channel)
        except asyncio.CancelledError:
            StubbornLayer.lost += 1
            return await super().receive(channel)


@pytest.fixture
def stubborn_layer(settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.test_sockets.StubbornLayer"}}
    channel_layers.backends.clear()
    StubbornLayer.lost = 0
    yield
    channel_layers.backends.clear()


async def ended(communicator: WebsocketCommunicator) -> bool:
    """Whether the socket's consumer has finished (without cancelling it, as ``wait()`` would)."""
    await asyncio.wait([communicator.future], timeout=TIMEOUT)
    return communicator.future.done()


async def test_a_task_that_ignores_its_cancellation_is_stopped_anyway():
    started = asyncio.Event()

    async def stubborn() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(stubborn())
    await started.wait()
    await asyncio.wait_for(tasks_stop([task]), TIMEOUT)
    assert task.cancelled()


async def test_receiving_within_a_time_gives_up_on_a_stubborn_receive(stubborn_layer):
    layer = channel_layers["default"]
    channel = await layer.new_channel()
    assert await asyncio.wait_for(layer_receive_within(layer, channel, 0.05), TIMEOUT) is None
    assert StubbornLayer.lost == 1
    await layer.send(channel, {"type": "x"})
    assert await layer_receive_within(layer, channel, TIMEOUT) == {"type": "x"}, "nothing left reading it"


async def test_a_closed_customer_socket_ends_and_gives_its_lease_back(stubborn_layer, settings, no_turn_left_running):
    settings.CHAT_SOCKETS_PER_ADDRESS = 1
    address = an_address()
    communicator = await attached(None, address=address)
    await communicator.send_input({"type": "websocket.disconnect", "code": 1001})
    assert await ended(communicator), "the consumer never finished"
    assert StubbornLayer.lost >= 1, "the layer did lose the cancellation"
    await (await attached(None, address=address)).disconnect()  # the one socket allowed is free again


@pytest.mark.parametrize(
    "path", ["/ws/operators/conversations/00000000-0000-4000-8000-000000000001/", "/ws/operators/inbox/"]
)
async def test_a_refused_staff_socket_ends(stubborn_layer, path):
    communicator = WebsocketCommunicator(application, path, headers=await staff_headers(None))
    connected, code = await communicator.connect(timeout=TIMEOUT)
    assert not connected and code == 4403
    await communicator.send_input({"type": "websocket.disconnect", "code": 4403})
    assert await ended(communicator), "the refused consumer never finished"
