"""Shared fixtures. Every test runs on the builtin model with no pauses, and no test reaches a real
model over the network: only loopback servers that a test starts itself may be called."""

from __future__ import annotations

import asyncio
import io

import httpx2
import pytest
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.core.management import call_command

from chat import consumers, llm, runtime


@pytest.fixture(autouse=True)
def _builtin_model_without_pauses(settings):
    settings.CHAT_BACKEND = "builtin"
    settings.CHAT_MODEL = "builtin-support-1"
    settings.CHAT_BUILTIN_DELAY_MS = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
    llm.get_chat_model.cache_clear()
    runtime.get_toolbox.cache_clear()
    yield
    llm.get_chat_model.cache_clear()


@pytest.fixture(autouse=True)
def _no_network_models(monkeypatch):
    real = httpx2.AsyncHTTPTransport.handle_async_request

    async def loopback_only(self, request):
        if request.url.host not in {"127.0.0.1", "localhost", "::1"}:
            raise AssertionError(f"a test tried to reach {request.url.host}: tests never call real models")
        return await real(self, request)

    monkeypatch.setattr(httpx2.AsyncHTTPTransport, "handle_async_request", loopback_only)


@pytest.fixture
def demo_data(db):
    """The contract's demo data: john_doe/key (12345 Open, 67890 Closed), jane_roe/jane-key (24680)."""
    call_command("seed_demo", password="demo-password-1", stdout=io.StringIO())


SEED_MESSAGES = [
    "Hi there, my username is john_doe, can you help me check the status for my ticket?",
    'Sure, my username is "john_doe" and my API key is: "key"',
    "Yea it's: 12345",
    "That's it, thanks.",
]


@pytest.fixture
async def no_turn_left_running():
    """For socket tests: a channel layer of the test's own event loop (the Redis layer must not outlive
    its loop), and no turn may still be running when the test is over."""
    channel_layers.backends.clear()
    yield
    if consumers.running_turns:
        await asyncio.wait(list(consumers.running_turns), timeout=10)
    assert not consumers.running_turns, "a turn was still running after the test"
    layer = channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
