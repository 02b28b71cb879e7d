"""Who the client is: ``X-Forwarded-For`` is believed only from ``TRUSTED_PROXIES`` (walked from the
right, the first untrusted address wins), never from anyone else, and never a value that is not an IP
address; the same over HTTP and the WebSocket, and with the README's own production command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.conf import settings as django_settings
from websockets.sync.client import connect as ws_connect

from chat.models import Conversation
from supportsite.asgi import application
from supportsite.proxies import client_address
from tests.support.browser import ARTIFACTS, daphne_environment, free_port, wait_for_port
from tests.support.sockets import ORIGIN, TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)

CUSTOMER, ATTACKER, PROXY, INNER_PROXY = "203.0.113.9", "198.51.100.7", "10.0.0.5", "10.0.0.7"
GARBAGE = "not-an-ip<script>"


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "expected"),
    [
        ([], ATTACKER, ["1.2.3.4"], ATTACKER),  # nobody is trusted: the header is ignored
        (["10.0.0.0/8"], ATTACKER, ["1.2.3.4"], ATTACKER),  # the peer is not a trusted proxy
        (["10.0.0.0/8"], PROXY, ["1.2.3.4", CUSTOMER], CUSTOMER),  # the client's own entry is ignored
        (["10.0.0.0/8"], PROXY, [CUSTOMER, INNER_PROXY], CUSTOMER),  # a chain of trusted proxies
        ([PROXY], PROXY, [CUSTOMER, INNER_PROXY], INNER_PROXY),  # an untrusted hop stops the walk
        (["10.0.0.0/8"], PROXY, [GARBAGE], PROXY),
        (["10.0.0.0/8"], PROXY, [" ::ffff:203.0.113.9 "], CUSTOMER),
        (["10.0.0.0/8"], PROXY, [], PROXY),
        ([], GARBAGE, [], None),
    ],
)
def test_the_client_is_the_right_most_address_no_trusted_proxy_wrote(settings, trusted, peer, forwarded, expected):
    settings.TRUSTED_PROXIES = trusted
    assert client_address(peer, forwarded) == expected


@pytest.mark.urls("tests.proxy_urls")
@pytest.mark.parametrize(
    ("trusted", "peer", "header", "expected"),
    [
        ([], ATTACKER, f"{CUSTOMER}, {GARBAGE}", ATTACKER),
        (["10.0.0.0/8"], PROXY, f"6.6.6.6, {CUSTOMER}", CUSTOMER),
        (["10.0.0.0/8"], PROXY, GARBAGE, PROXY),
    ],
)
async def test_http_sees_the_resolved_address(settings, trusted, peer, header, expected):
    settings.TRUSTED_PROXIES = trusted
    headers = [(b"host", b"127.0.0.1"), (b"x-forwarded-for", header.encode())]
    communicator = HttpCommunicator(application, "GET", "/whoami/", headers=headers)
    communicator.scope["client"] = (peer, 40000)
    response = await communicator.get_response(timeout=TIMEOUT)
    assert response["status"] == 200 and response["body"].decode() == expected


async def stored_address_of_a_socket(peer: str, header: str) -> str | None:
    headers = [ORIGIN, (b"x-forwarded-for", header.encode())]
    communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    communicator.scope["client"] = (peer, 40000)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected
    first = await communicator.receive_json_from(timeout=TIMEOUT)
    await communicator.disconnect()
    return await database_sync_to_async(lambda: Conversation.objects.get(id=first["id"]).client_address)()


@pytest.mark.usefixtures("no_turn_left_running")
async def test_the_socket_sees_the_resolved_address_and_never_stores_garbage(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert await stored_address_of_a_socket(ATTACKER, f"{CUSTOMER}, {GARBAGE}") == ATTACKER
    assert await stored_address_of_a_socket(PROXY, f"6.6.6.6, {CUSTOMER}") == CUSTOMER
    assert await stored_address_of_a_socket(PROXY, GARBAGE) == PROXY


def readme_daphne_arguments() -> list[str]:
    """The options of the daphne command in the README's production section."""
    readme = (Path(django_settings.BASE_DIR) / "README.md").read_text()
    production = readme.split("## Production", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in production.splitlines() if re.search(r"\bdaphne\b.*supportsite\.asgi", line))
    words = line.split()
    options = words[words.index(next(w for w in words if w.endswith("daphne"))) + 1 : -1]
    bound = []
    skip = False
    for word in options:  # our own loopback port instead of -b/-p
        if skip:
            skip = False
        elif word in {"-b", "-p", "--bind", "--port"}:
            skip = True
        else:
            bound.append(word)
    return bound


def test_the_readme_production_command_ignores_forwarded_for_from_a_client(transactional_db):
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"proxies-daphne-{port}.log"
    daphne = shutil.which("daphne", path=str(Path(sys.executable).parent)) or "daphne"
    command = [daphne, "-b", "127.0.0.1", "-p", str(port), *readme_daphne_arguments(), "supportsite.asgi:application"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=django_settings.BASE_DIR, env=daphne_environment(),
                                   stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
        with ws_connect(f"ws://127.0.0.1:{port}/ws/chat/", origin=f"http://127.0.0.1:{port}",
                        additional_headers={"X-Forwarded-For": f"{uuid.uuid4().hex}, {GARBAGE}"},
                        open_timeout=TIMEOUT) as socket:
            first = json.loads(socket.recv(timeout=TIMEOUT))
        assert Conversation.objects.get(id=first["id"]).client_address == "127.0.0.1"
    finally:
        process.terminate()
        process.wait(timeout=10)
    log.unlink(missing_ok=True)
