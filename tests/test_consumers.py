"""``/ws/chat/`` through the whole ASGI stack (origin check, sessions, routing) with Channels' communicator.

Runs on the defaults (SQLite, in-memory layer) and on PostgreSQL + Redis (``DATABASE_URL``, ``REDIS_URL``).
Every test waits for frames up to ``idle`` with a timeout; none sleeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from django.conf import settings as django_settings

from chat import consumers, limits, llm, turnlock
from chat.agent import ModelError
from chat.builtin import GOODBYE, GREETING
from tests.support.history import stored_error_codes, stored_turns
from tests.support.models import ScriptedModel
from tests.support.seed import SEED_MESSAGES
from tests.support.sockets import assistant_texts, connect, new_session_key, of_type, open_chat, say, until_idle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("no_turn_left_running")]


@pytest.fixture
def model(chat_model) -> ScriptedModel:
    """The builtin model behind a gate the test controls; it counts calls."""
    return chat_model



async def greeted(session_key: str | None, *, new: bool = False):
    communicator, conversation_id = await open_chat(session_key, new=new)
    frames = await until_idle(communicator)
    assert assistant_texts(frames) == [GREETING]
    return communicator, conversation_id


# A NEW CONVERSATION


async def test_new_conversation_starts_with_the_greeting(model):
    communicator, connected, _ = await connect(await new_session_key())
    assert connected
    first = await communicator.receive_json_from()
    assert first["type"] == "conversation"
    uuid.UUID(first["id"])
    frames = await until_idle(communicator)
    kinds = [frame["type"] for frame in frames]
    assert kinds[0] == "typing"
    assert kinds[-2:] == ["message", "idle"]
    assert set(kinds[1:-2]) == {"delta"}
    assert "".join(f["text"] for f in of_type(frames, "delta")) == GREETING
    assert frames[-2] == {"type": "message", "role": "assistant", "text": GREETING, "seq": 1}  # its row's number
    assert model.calls == 1
    assert await stored_turns(uuid.UUID(first["id"])) == [("assistant", GREETING)]
    await communicator.disconnect()


async def test_the_seed_conversation_over_the_socket(demo_data, model):
    communicator, conversation_id = await greeted(await new_session_key())

    first = await say(communicator, SEED_MESSAGES[0])
    assert not of_type(first, "tool")
    assert "API key" in assistant_texts(first)[-1]

    verify = await say(communicator, SEED_MESSAGES[1])
    tools = of_type(verify, "tool")
    assert [(t["name"], t["status"]) for t in tools] == [("verify_user", "started"), ("verify_user", "done")]
    assert tools[0]["arguments"] == {"username": "john_doe", "api_key": "****"}
    assert tools[1]["result"] == {"success": True}
    assert "verified" in assistant_texts(verify)[-1]

    status = await say(communicator, SEED_MESSAGES[2])
    tools = of_type(status, "tool")
    assert [(t["name"], t["status"]) for t in tools] == [
        ("get_ticket_status", "started"),
        ("get_ticket_status", "done"),
    ]
    assert tools[0]["arguments"] == {"ticket_id": "12345"}
    assert tools[1]["result"] == {"ticket_id": "12345", "status": "Open", "issue": "Billing Query"}
    answer = assistant_texts(status)[-1]
    assert "Open" in answer and "Billing Query" in answer

    goodbye = await say(communicator, SEED_MESSAGES[3])
    assert assistant_texts(goodbye) == [GOODBYE]

    every_frame = first + verify + status + goodbye
    assert not [f for f in every_frame if f["type"] == "message" and f["role"] == "user"], "no echo to the sender"
    assert '"key"' not in str(every_frame) and "'key'" not in str(every_frame)
    turns = await stored_turns(conversation_id)
    assert [content for role, content in turns if role == "user"][1] == (
        'Sure, my username is "john_doe" and my API **** is: "****"'
    )
    await communicator.disconnect()


# RESUMING, AND WHO MAY


async def test_reconnecting_resumes_the_conversation_without_a_second_greeting(demo_data, model):
    session_key = await new_session_key()
    communicator, conversation_id = await greeted(session_key)
    await say(communicator, SEED_MESSAGES[1])
    await communicator.disconnect()
    calls = model.calls

    again, connected, _ = await connect(session_key)
    assert connected
    first = await again.receive_json_from()
    assert first == {"type": "conversation", "id": str(conversation_id), "resumed": True}
    replay = await until_idle(again)
    assert replay[-1] == {"type": "idle"}
    assert all(frame.get("replay") is True for frame in replay[:-1])
    assert [(f["type"], f.get("role") or f.get("name")) for f in replay[:-1]] == [
        ("message", "assistant"),
        ("message", "user"),
        ("tool", "verify_user"),
        ("message", "assistant"),
    ]
    assert replay[0]["text"] == GREETING
    assert replay[1]["text"] == 'Sure, my username is "john_doe" and my API **** is: "****"'
    assert replay[2]["arguments"] == {"username": "john_doe", "api_key": "****"}
    assert model.calls == calls, "resuming must not call the model"

    reply = await say(again, SEED_MESSAGES[2])
    assert "Open" in assistant_texts(reply)[-1], "the resumed conversation is still verified"
    await again.disconnect()


async def test_new_1_starts_another_conversation_in_the_same_session(model):
    session_key = await new_session_key()
    communicator, first_id = await greeted(session_key)
    await communicator.disconnect()

    fresh, second_id = await greeted(session_key, new=True)
    await fresh.disconnect()
    assert second_id != first_id

    resumed, resumed_id = await open_chat(session_key)
    assert resumed_id == second_id, "the newest conversation of the session is resumed"
    assert [f["text"] for f in await until_idle(resumed) if f["type"] == "message"] == [GREETING]
    await resumed.disconnect()


async def test_another_session_never_reaches_the_conversation(model):
    owner, owner_id = await greeted(await new_session_key())
    await say(owner, "my username is john_doe")

    stranger, stranger_id = await greeted(await new_session_key())
    assert stranger_id != owner_id
    await say(stranger, "hello")
    owner_frames = await say(owner, "hello again")
    assert not [f for f in owner_frames if f.get("role") == "user"], "nothing of the stranger reaches the owner"
    await stranger.disconnect()
    await owner.disconnect()
    assert ("user", "hello") not in await stored_turns(owner_id)


@pytest.mark.parametrize("cookie", [None, "madeup00000000000000000000000000"], ids=["no-cookie", "made-up-key"])
async def test_a_socket_without_a_real_session_gets_a_conversation_of_its_own(model, cookie):
    owner, owner_id = await greeted(await new_session_key())
    await owner.disconnect()

    first, first_id = await greeted(cookie)
    await first.disconnect()
    second, second_id = await greeted(cookie)
    await second.disconnect()
    assert len({owner_id, first_id, second_id}) == 3, "a key the server never issued resumes nothing"


@pytest.mark.parametrize(
    "origin", [(b"origin", b"http://evil.example"), (b"origin", b"null"), None], ids=["foreign", "null", "missing"]
)
async def test_handshakes_from_other_origins_are_refused(model, origin):
    communicator, connected, _ = await connect(await new_session_key(), origin=origin)
    assert not connected
    assert model.calls == 0
    await communicator.disconnect()


# BAD FRAMES


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ({"text_data": "{not json"}, "bad_frame", "not valid JSON"),
        ({"text_data": '["message", "hi"]'}, "bad_frame", "JSON object"),
        ({"text_data": '"hi"'}, "bad_frame", "JSON object"),
        ({"text_data": '{"type": "subscribe", "text": "hi"}'}, "unknown_type", "Unknown message type"),
        ({"text_data": '{"text": "hi"}'}, "unknown_type", "Unknown message type"),
        ({"text_data": '{"type": "message"}'}, "bad_frame", '"text"'),
        ({"text_data": '{"type": "message", "text": 42}'}, "bad_frame", '"text"'),
        ({"text_data": '{"type": "message", "text": ""}'}, "empty_message", "empty"),
        ({"text_data": '{"type": "message", "text": "  \\n "}'}, "empty_message", "empty"),
        ({"text_data": '{"type": "message", "text": "' + "a" * 4001 + '"}'}, "message_too_long", "4000"),
        ({"bytes_data": b'{"type": "message", "text": "hi"}'}, "bad_frame", "binary"),
    ],
    ids=[
        "invalid-json",
        "array",
        "string",
        "unknown-type",
        "missing-type",
        "missing-text",
        "text-not-string",
        "empty-text",
        "blank-text",
        "too-long",
        "binary",
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_socket_keeps_working(model, frame, code, words):
    communicator, conversation_id = await greeted(await new_session_key())
    calls = model.calls

    await communicator.send_to(**frame)
    error = await communicator.receive_json_from()
    assert error["type"] == "error" and error["code"] == code, error
    assert words in error["message"]
    assert error["refused"] is True, "the page must know no turn starts for it"
    assert await communicator.receive_json_from() == {"type": "idle"}
    assert await communicator.receive_nothing(timeout=0.05)
    assert model.calls == calls
    assert await stored_turns(conversation_id) == [("assistant", GREETING)]

    reply = await say(communicator, "hello")
    assert assistant_texts(reply), "the socket still answers"
    await communicator.disconnect()


async def test_a_message_of_exactly_the_limit_is_accepted(model, settings):
    communicator, _ = await greeted(await new_session_key())
    reply = await say(communicator, "a" * settings.CHAT_MAX_MESSAGE_CHARS)
    assert not of_type(reply, "error") and assistant_texts(reply)
    await communicator.disconnect()


# MODEL FAILURES


@pytest.mark.parametrize(
    "failure",
    [
        ModelError("model_timeout", "The assistant took too long to answer. Please try again in a moment."),
        ModelError("model_busy", "The assistant is very busy right now. Please try again in a minute."),
    ],
    ids=["timeout", "busy"],
)
async def test_a_model_failure_is_reported_and_the_next_message_works(demo_data, model, failure):
    communicator, conversation_id = await greeted(await new_session_key())
    model.queue(failure)

    frames = await say(communicator, SEED_MESSAGES[1])
    assert frames[-2:] == [
        {"type": "error", "code": failure.code, "message": failure.message, "seq": 3},  # greeting, message, error
        {"type": "idle"},
    ]
    assert not assistant_texts(frames)
    turns = await stored_turns(conversation_id)
    assert turns[-2][0] == "user" and "john_doe" in turns[-2][1], "the customer's message is kept"
    assert turns[-1] == ("error", failure.message)
    assert await stored_error_codes(conversation_id) == [failure.code]

    retry = await say(communicator, SEED_MESSAGES[1])
    assert not of_type(retry, "error")
    assert "verified" in assistant_texts(retry)[-1]
    await communicator.disconnect()


async def test_an_unreachable_endpoint_gets_a_customer_readable_error(model, settings, unused_tcp_port):
    settings.CHAT_MAX_RETRIES = 0
    closed_port = llm.openai_client(base_url=f"http://127.0.0.1:{unused_tcp_port}/v1", api_key="test")
    model.inner = llm.OpenAIChatModel(closed_port, "gpt-test")

    communicator, conversation_id = await open_chat(await new_session_key())
    frames = await until_idle(communicator)
    error = of_type(frames, "error")[0]
    assert error["code"] == "model_unavailable"
    assert "can't be reached" in error["message"]
    assert "127.0.0.1" not in error["message"] and "Connection" not in error["message"]
    assert await stored_error_codes(conversation_id) == ["model_unavailable"]
    assert await stored_turns(conversation_id) == [("error", error["message"])]
    await communicator.disconnect()


async def test_an_unexpected_crash_in_a_turn_still_ends_it(model):
    communicator, conversation_id = await greeted(await new_session_key())
    model.queue(RuntimeError("boom"))  # not a ModelError: a bug somewhere
    frames = await say(communicator, "hello")
    assert frames[-2]["type"] == "error" and frames[-2]["code"] == "internal_error"
    assert "boom" not in frames[-2]["message"]
    assert await stored_error_codes(conversation_id) == ["internal_error"]
    reply = await say(communicator, "hello")
    assert assistant_texts(reply)
    await communicator.disconnect()


# TURNS OUTLIVE SOCKETS, AND NEVER INTERLEAVE

# greeting; user, verify_user call, its result, answer; user, get_ticket_status call, its result, answer
TWO_VERIFIED_TURNS = ["assistant", "user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]


async def test_a_turn_finishes_after_the_customer_disconnects(demo_data, model):
    session_key = await new_session_key()
    communicator, conversation_id = await greeted(session_key)
    model.hold()
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[1]})
    await asyncio.wait_for(model.entered.wait(), timeout=10)
    await communicator.disconnect()
    model.release()
    await asyncio.wait_for(asyncio.gather(*consumers.running_turns), timeout=10)

    turns = await stored_turns(conversation_id)
    assert [role for role, _ in turns] == ["assistant", "user", "assistant", "tool", "assistant"]
    again, resumed_id = await open_chat(session_key)
    assert resumed_id == conversation_id
    replay = await until_idle(again)
    assert "verified" in assistant_texts(replay)[-1]
    await again.disconnect()


async def test_reconnecting_during_a_turn_shows_the_rest_of_it(demo_data, model):
    session_key = await new_session_key()
    communicator, conversation_id = await greeted(session_key)
    model.hold()
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[1]})
    await asyncio.wait_for(model.entered.wait(), timeout=10)
    # The model may be asked (an early call) while the turn's first step still stores the message: the
    # reconnect below is meant to land after it, mid-turn.
    for _ in range(500):
        if [role for role, _ in await stored_turns(conversation_id)] == ["assistant", "user"]:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the message was not stored")
    await communicator.disconnect()

    again, resumed_id = await open_chat(session_key)
    assert resumed_id == conversation_id
    replayed = [await again.receive_json_from(), await again.receive_json_from()]
    assert [f.get("role") for f in replayed] == ["assistant", "user"]
    assert await again.receive_nothing(timeout=0.05), "no idle while the turn is still running"
    model.release()
    rest = await until_idle(again)
    assert "verified" in assistant_texts(rest)[-1]
    await again.disconnect()


async def test_a_message_sent_while_the_one_before_is_being_stored_is_stored_and_answered_after_it(
    demo_data, model, settings, monkeypatch
):
    """The first message goes to a free conversation: its turn counts and stores it in its first step. The
    second arrives meanwhile and must wait; on another database thread its storing could overtake the
    first's, so the turn would take the second first. Messages received by a process are stored in order."""
    settings.DATABASE_THREADS = 2
    communicator, conversation_id = await greeted(await new_session_key())
    admit = limits.message_admit
    counted = []

    def slow_first(**kwargs) -> None:
        counted.append(kwargs)
        if len(counted) == 1:
            time.sleep(0.3)  # the first message's count, in its turn's first step
        admit(**kwargs)

    monkeypatch.setattr(limits, "message_admit", slow_first)
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[1]})
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[2]})
    first = await until_idle(communicator)
    second = await until_idle(communicator)

    assert len(counted) == 2
    assert "verified" in assistant_texts(first)[-1]
    assert "Open" in assistant_texts(second)[-1]
    assert [role for role, _ in await stored_turns(conversation_id)] == TWO_VERIFIED_TURNS
    await communicator.disconnect()


async def test_two_messages_at_once_on_one_socket_are_answered_in_order(demo_data, model):
    communicator, conversation_id = await greeted(await new_session_key())
    model.hold()
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[1]})
    await communicator.send_json_to({"type": "message", "text": SEED_MESSAGES[2]})
    await asyncio.wait_for(model.entered.wait(), timeout=10)
    model.release()
    first = await until_idle(communicator)
    second = await until_idle(communicator)

    assert "verified" in assistant_texts(first)[-1]
    assert [t["name"] for t in of_type(first, "tool")] == ["verify_user", "verify_user"]
    assert "Open" in assistant_texts(second)[-1]
    assert [t["name"] for t in of_type(second, "tool")] == ["get_ticket_status", "get_ticket_status"]
    roles = [role for role, _ in await stored_turns(conversation_id)]
    assert roles == TWO_VERIFIED_TURNS
    await communicator.disconnect()


async def test_two_tabs_of_one_session_take_turns_and_see_each_other(demo_data, model):
    session_key = await new_session_key()
    tab_a, conversation_id = await greeted(session_key)
    tab_b, same_id = await open_chat(session_key)
    assert same_id == conversation_id
    await until_idle(tab_b)  # the replayed greeting

    model.hold()
    await tab_a.send_json_to({"type": "message", "text": SEED_MESSAGES[1]})
    await asyncio.wait_for(model.entered.wait(), timeout=10)
    await tab_b.send_json_to({"type": "message", "text": SEED_MESSAGES[2]})
    model.release()

    a_first, b_first = await until_idle(tab_a), await until_idle(tab_b)
    a_second, b_second = await until_idle(tab_a), await until_idle(tab_b)

    # Tab B sees A's message echoed, then the reply; then (its own message not echoed) the reply to it.
    assert b_first[0] == {"type": "message", "role": "user", "text": SEED_MESSAGES[1], "seq": 2}
    assert "verified" in assistant_texts(b_first)[-1]
    assert not [f for f in b_second if f.get("role") == "user"]
    assert "Open" in assistant_texts(b_second)[-1]
    # Tab A sees its reply, then B's message echoed before the reply to it.
    assert not [f for f in a_first if f.get("role") == "user"]
    assert a_second[0] == {"type": "message", "role": "user", "text": SEED_MESSAGES[2], "seq": 6}
    assert "Open" in assistant_texts(a_second)[-1]

    turns = await stored_turns(conversation_id)
    assert [role for role, _ in turns] == TWO_VERIFIED_TURNS
    assert turns[5] == ("user", SEED_MESSAGES[2])
    await tab_a.disconnect()
    await tab_b.disconnect()


# ACROSS SERVER PROCESSES (Redis only: the lease lives in the channel layer's Redis)

needs_redis = pytest.mark.skipif(not django_settings.CHAT_TURN_LEASE_URL, reason="REDIS_URL is not set")


@needs_redis
async def test_a_turn_waits_for_a_turn_running_in_another_process(model):
    """Another process's turn is its Redis lease, taken without this process's asyncio lock."""
    conversation_id = uuid.uuid4()
    other_process_done = asyncio.Event()
    entered = asyncio.Event()
    order: list[str] = []

    async def other_process() -> None:
        async with turnlock._redis_lease(turnlock._lease_client(), conversation_id):
            order.append("other")
            entered.set()
            await other_process_done.wait()

    async def this_process() -> None:
        async with turnlock.conversation_lock(conversation_id):
            order.append("this")

    other = asyncio.create_task(other_process())
    await asyncio.wait_for(entered.wait(), timeout=10)
    assert await turnlock.conversation_busy(conversation_id)
    mine = asyncio.create_task(this_process())
    done, _ = await asyncio.wait([mine], timeout=0.3)
    assert not done, "the turn must wait while another process holds the conversation"
    other_process_done.set()
    await asyncio.wait_for(asyncio.gather(other, mine), timeout=10)
    assert order == ["other", "this"]
    assert not await turnlock.conversation_busy(conversation_id)


@needs_redis
async def test_a_turn_gives_its_lease_back_behind_it(monkeypatch):
    """The release's round trip is off the turn's path (its idle goes at once); the next turn of this
    process, and whether the conversation is busy, wait for the release instead of finding it held."""
    import redis.asyncio.lock

    conversation_id = uuid.uuid4()
    may_release = asyncio.Event()
    do_release = redis.asyncio.lock.Lock.do_release

    async def held_release(self, expected_token):
        await may_release.wait()
        await do_release(self, expected_token)

    monkeypatch.setattr(redis.asyncio.lock.Lock, "do_release", held_release)

    async def turn() -> None:
        async with turnlock.conversation_lock(conversation_id, release_behind=True):
            pass

    await asyncio.wait_for(turn(), timeout=1)  # over while its lease is still being given back
    assert await turnlock._lease_client().exists(turnlock._lease_name(conversation_id))
    stored_to_wait = []

    async def store_to_wait() -> None:
        stored_to_wait.append(True)

    async def next_turn() -> str:
        async with turnlock.conversation_lock(conversation_id, before_waiting=store_to_wait):
            return "entered"

    busy = asyncio.create_task(turnlock.conversation_busy(conversation_id))
    following = asyncio.create_task(next_turn())
    done, _ = await asyncio.wait([busy, following], timeout=0.2)
    assert not done, "both wait for the release"
    may_release.set()
    assert await asyncio.wait_for(busy, timeout=5) is False
    assert await asyncio.wait_for(following, timeout=5) == "entered"
    assert stored_to_wait == [], "a conversation free but for our own release is not waited on as another's"
    assert not await turnlock.conversation_busy(conversation_id)


@needs_redis
async def test_a_holder_whose_block_fails_has_given_the_lease_back_when_it_lets_go(monkeypatch):
    """Without ``release_behind`` (a person's handoff steps) the lease is given back before the lock lets go,
    however the block ended: a failure in it leaves no release behind for a loop to drop."""
    import redis.asyncio.lock

    do_release = redis.asyncio.lock.Lock.do_release

    async def slow_release(self, expected_token):
        await asyncio.sleep(0.2)
        await do_release(self, expected_token)

    monkeypatch.setattr(redis.asyncio.lock.Lock, "do_release", slow_release)
    conversation_id = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with turnlock.conversation_lock(conversation_id):
            raise RuntimeError("the step failed")
    assert not await turnlock._lease_client().exists(turnlock._lease_name(conversation_id))


@needs_redis
def test_a_turn_run_from_sync_code_has_given_its_lease_back_when_it_returns(model):
    """``async_to_sync`` runs each call on a loop of its own that ends with it (so does ``asyncio.run``, for
    the last turn of the ``chat`` command or an evaluation run): a release left behind there would be
    dropped, and the next turn would wait for the lease to expire (15 s)."""
    import redis
    from asgiref.sync import async_to_sync

    from chat import services
    from chat.runtime import conversation_respond

    conversation = services.conversation_start(session_key="s" * 32)

    async def ignore(frame) -> None:
        return None

    started = time.monotonic()
    for text in ("Hello", "Hello again"):
        async_to_sync(conversation_respond)(conversation_id=conversation.id, emit=ignore, customer_text=text)
        lease = redis.Redis.from_url(django_settings.CHAT_TURN_LEASE_URL).exists(turnlock._lease_name(conversation.id))
        assert not lease, "the lease is given back before the turn returns"
    assert time.monotonic() - started < 10, "the second turn did not wait for the first one's lease to expire"


@needs_redis
async def test_a_lease_that_cannot_be_given_back_is_logged_and_expires(monkeypatch, caplog):
    """Redis failing as a turn ends: the turn is over all the same (the failure is logged, not raised into
    it), and the lease expires by itself; the process asks Redis again for the next turn."""
    import redis.asyncio.lock
    import redis.exceptions

    async def unreachable(self, expected_token):
        raise redis.exceptions.ConnectionError("Redis went away")

    monkeypatch.setattr(redis.asyncio.lock.Lock, "do_release", unreachable)
    conversation_id = uuid.uuid4()
    async with turnlock.conversation_lock(conversation_id):
        pass
    await asyncio.sleep(0.05)  # the release, behind the turn
    assert "could not give back the turn lease" in caplog.text
    assert await turnlock._lease_client().pttl(turnlock._lease_name(conversation_id)) > 0, "it expires by itself"
    assert not turnlock._releasing, "nothing is left waiting on it"
    await turnlock._lease_client().delete(turnlock._lease_name(conversation_id))


@needs_redis
async def test_resuming_while_another_process_runs_a_turn_sends_no_idle(model):
    session_key = await new_session_key()
    communicator, conversation_id = await greeted(session_key)
    await communicator.disconnect()
    async with turnlock._redis_lease(turnlock._lease_client(), conversation_id):
        again, _ = await open_chat(session_key)
        assert (await again.receive_json_from())["text"] == GREETING
        assert await again.receive_nothing(timeout=0.1), "the other process's turn will send the idle"
        await again.disconnect()


@needs_redis
@pytest.mark.parametrize("pool_size", [1000, 5])
async def test_three_hundred_turns_at_once_all_get_their_lease(settings, pool_size):
    """More turns than redis-py's default pool (100) take leases at once: none fails with
    MaxConnectionsError; past ``REDIS_MAX_CONNECTIONS`` a command waits for a free connection."""
    settings.REDIS_MAX_CONNECTIONS = pool_size  # the client is made per event loop: this test's
    inside = 0

    async def turn() -> None:
        nonlocal inside
        async with turnlock.conversation_lock(uuid.uuid4()):
            inside += 1
            await asyncio.sleep(0.05)

    await asyncio.wait_for(asyncio.gather(*(turn() for _ in range(300))), timeout=60)
    assert inside == 300
    assert not await turnlock.conversation_busy(uuid.uuid4())
