"""The phrasings customers type, read by the builtin model through the real runtime (cards answered as
the page's click would be): introductions, keys without "is", a key on its own, requests made before
verifying, several ids, "#24680", listing, "the one about …", opening and adding to tickets, yes / no."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command

from chat import builtin
from chat.confirmations import confirmation_decide
from chat.models import Conversation
from chat.runtime import conversation_attach, conversation_respond
from tests.support.history import assert_valid_api_history, stored_messages
from tickets.models import Ticket, TicketComment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("demo_data")]

TOOLS = {"verify_user", "get_ticket_status", "list_my_tickets", "create_ticket", "add_ticket_comment"}


class Customer:
    """A conversation driven through ``chat.runtime``; ``answers`` click the cards in order."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.conversation_id: uuid.UUID | None = None

    async def start(self) -> Customer:
        attached = await database_sync_to_async(conversation_attach)(
            session_key=uuid.uuid4().hex, client_address="127.0.0.1"
        )
        self.conversation_id = attached.conversation.id
        await self.say(None)
        return self

    async def say(self, text: str | None) -> dict[str, Any]:
        frames: list[dict[str, Any]] = []

        async def emit(frame: dict[str, Any]) -> None:
            frames.append(frame)
            if frame["type"] == "confirm" and self.answers:
                await database_sync_to_async(confirmation_decide)(
                    conversation_id=self.conversation_id, confirm_id=uuid.UUID(frame["id"]),
                    approve=self.answers.pop(0),
                )

        await conversation_respond(conversation_id=self.conversation_id, emit=emit, customer_text=text)
        return {
            "said": [f["text"] for f in frames if f["type"] == "message" and f["role"] == "assistant"],
            "calls": [(f["name"], f["arguments"]) for f in frames if f["type"] == "tool" and f["status"] == "started"],
            "cards": [f for f in frames if f["type"] == "confirm"],
        }

    async def verified_as(self) -> str | None:
        conversation = await Conversation.objects.select_related("customer").aget(id=self.conversation_id)
        return conversation.customer.username if conversation.customer else None


async def customer(*answers: bool) -> Customer:
    return await Customer(*answers).start()


# WHO THEY ARE


async def test_im_username_is_read_as_the_username():
    john = await customer()
    assert (await john.say("I'm john_doe"))["said"] == [builtin.ASK_KEY.format(username="john_doe")]


async def test_i_am_username_with_my_api_key_is_verifies():
    jane = await customer()
    turn = await jane.say("I am jane_roe, my API key is jane-key")
    assert turn["calls"] == [("verify_user", {"username": "jane_roe", "api_key": "****"})]
    assert await jane.verified_as() == "jane_roe"


def test_a_plain_name_counts_only_right_before_the_key():
    decision = builtin.decide([{"role": "user", "content": "I'm alice, my api key is k-1"}], TOOLS)
    assert decision.tool_calls == [("verify_user", {"username": "alice", "api_key": "k-1"})]
    assert builtin.decide([{"role": "user", "content": "I'm alice"}], TOOLS).tool_calls == []


async def test_username_and_api_key_without_is_verify():
    john = await customer()
    await john.say("username john_doe, api key key")
    assert await john.verified_as() == "john_doe"


@pytest.mark.parametrize("key_message", ["key", '"key"', "it's key", "my API key is key"])
async def test_a_key_given_without_the_username_after_the_username_verifies(key_message):
    john = await customer()
    await john.say("I'm john_doe")
    turn = await john.say(key_message)
    assert turn["calls"] == [("verify_user", {"username": "john_doe", "api_key": "****"})]
    assert await john.verified_as() == "john_doe"


@pytest.mark.parametrize(
    "text", ["I'm locked out of my account", "I'm sorry, I forgot", "I am trying to log in", "I'm confused."]
)
async def test_im_followed_by_a_common_word_is_nobody(text):
    someone = await customer()
    turn = await someone.say(text)
    assert turn["calls"] == [] and "Thanks," not in turn["said"][0]


@pytest.mark.parametrize("answer", ["no", "why?", "12345"])
async def test_words_that_answer_the_key_question_without_being_a_key_are_not_tried(answer):
    john = await customer()
    await john.say("I'm john_doe")
    assert (await john.say(answer))["calls"] == []


# TICKETS BY ID


async def test_a_ticket_asked_for_before_verification_is_looked_up_right_after_verifying():
    john = await customer()
    assert (await john.say("What's the status of ticket 12345?"))["said"] == [builtin.ASK_CREDENTIALS]
    turn = await john.say("username john_doe, api key key")
    assert [name for name, _ in turn["calls"]] == ["verify_user", "get_ticket_status"]
    assert "12345 is currently Open" in turn["said"][-1]


async def test_several_ids_in_one_message_before_verification_are_all_looked_up_after():
    john = await customer()
    await john.say("Can you check #12345, 67890?")
    turn = await john.say("I'm john_doe, my api key is key")
    assert turn["calls"][1:] == [("get_ticket_status", {"ticket_id": "12345"}),
                                 ("get_ticket_status", {"ticket_id": "67890"})]
    assert "12345 is currently Open" in turn["said"][-1] and "67890 is currently Closed" in turn["said"][-1]


async def test_hash_ticket_id():
    jane = await customer()
    await jane.say("username jane_roe, api key jane-key")
    turn = await jane.say("#24680")
    assert turn["calls"] == [("get_ticket_status", {"ticket_id": "24680"})]
    assert "24680 is currently In progress" in turn["said"][0]


# LISTING AND "THE ONE ABOUT …"


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("can you list my tickets?", {}),
        ("what tickets do I have?", {}),
        ("show me all my tickets", {}),
        ("show my open tickets", {"status": "Open"}),
        ("list my closed tickets", {"status": "Closed"}),
    ],
)
async def test_list_my_tickets(text, arguments):
    john = await customer()
    await john.say("username john_doe, api key key")
    turn = await john.say(text)
    assert turn["calls"] == [("list_my_tickets", arguments)]
    assert turn["cards"] == []  # reading asks nothing


@pytest.mark.parametrize(
    "text", ["I don't know the number, it's about my password reset", "the one about my password reset"]
)
async def test_the_one_about_my_password_reset_is_found_and_looked_up(text):
    jane = await customer()
    await jane.say("username jane_roe, api key jane-key")
    turn = await jane.say(text)
    assert turn["calls"] == [("list_my_tickets", {}), ("get_ticket_status", {"ticket_id": "24680"})]
    assert "24680 is currently In progress" in turn["said"][-1]


async def test_the_one_about_a_topic_no_ticket_has_lists_them():
    john = await customer()
    await john.say("username john_doe, api key key")
    turn = await john.say("it's about my broken keyboard")
    assert turn["said"][-1].startswith("I couldn't find a ticket about broken keyboard.")
    assert "12345 (Open): Billing Query" in turn["said"][-1]


# OPENING AND ADDING: ONLY AFTER THE CARD


@pytest.mark.parametrize(
    ("text", "issue"),
    [
        ("open a new ticket: my invoice is wrong", "My invoice is wrong"),
        ("Open a ticket saying the app crashes on start. It started yesterday.", "The app crashes on start"),
        ("please create a ticket about a missing parcel", "A missing parcel"),
    ],
)
async def test_open_a_ticket_saying(text, issue):
    john = await customer(True)
    await john.say("username john_doe, api key key")
    turn = await john.say(text)
    [card] = turn["cards"]
    assert card["tool"] == "create_ticket" and card["arguments"]["issue"] == issue
    ticket = await Ticket.objects.aget(conversation_id=john.conversation_id)
    assert ticket.issue == issue
    assert turn["said"] == [builtin.CREATED.format(ticket_id=ticket.public_id, issue=issue) + " "
                            + builtin.ANYTHING_ELSE]


async def test_open_a_ticket_without_its_text_asks_for_it():
    john = await customer(True)
    await john.say("username john_doe, api key key")
    assert (await john.say("I'd like to open a new ticket"))["said"] == [builtin.ASK_NEW_TICKET]
    await john.say("The export button does nothing.")
    assert (await Ticket.objects.aget(conversation_id=john.conversation_id)).issue == "The export button does nothing"


@pytest.mark.parametrize(
    ("text", "ticket_id", "comment"),
    [
        ("add to 12345 that I already paid", "12345", "I already paid"),
        ("Please add a comment to ticket #12345: call me after 5pm", "12345", "call me after 5pm"),
        ("can you tell them on 67890 that it broke again", "67890", "it broke again"),
        ("comment on 12345: the amount is 40 EUR", "12345", "the amount is 40 EUR"),
    ],
)
async def test_add_to_a_ticket_that(text, ticket_id, comment):
    john = await customer(True)
    await john.say("username john_doe, api key key")
    turn = await john.say(text)
    assert turn["cards"][0]["arguments"] == {"ticket_id": ticket_id, "text": comment}
    assert [c async for c in TicketComment.objects.values_list("ticket__public_id", "text")] == [(ticket_id, comment)]
    assert turn["said"] == [builtin.COMMENTED.format(ticket_id=ticket_id) + " " + builtin.ANYTHING_ELSE]


async def test_add_to_a_ticket_without_the_words_asks_for_them():
    john = await customer(True)
    await john.say("username john_doe, api key key")
    assert (await john.say("add a comment to 67890"))["said"] == [builtin.ASK_COMMENT.format(ticket_id="67890")]
    await john.say("It broke again this morning.")
    assert [c async for c in TicketComment.objects.values_list("text", flat=True)] == ["It broke again this morning."]


# YES / NO TO A CONFIRMATION


async def test_no_on_the_card_is_acknowledged_and_nothing_is_done():
    john = await customer(False)
    await john.say("username john_doe, api key key")
    turn = await john.say("add to 12345 that I already paid")
    assert turn["said"] == [builtin.NOT_APPROVED["refused"].format(action="added your comment")]
    assert not await TicketComment.objects.aexists()
    assert (await john.say("yes"))["cards"] == []  # a refusal is final: "yes" later is no approval


async def test_yes_after_an_unanswered_card_asks_again_and_no_lets_it_go(settings):
    settings.CHAT_CONFIRM_TIMEOUT_SECONDS = 0.2
    john = await customer()
    await john.say("username john_doe, api key key")
    turn = await john.say("open a new ticket: printer on fire")
    assert turn["said"] == [builtin.NOT_APPROVED["expired"].format(action="opened the ticket")]
    john.answers = [True]
    again = await john.say("yes")
    assert again["cards"][0]["arguments"]["issue"] == "Printer on fire"
    assert await Ticket.objects.filter(conversation_id=john.conversation_id).acount() == 1

    await john.say("open a new ticket: second printer")  # unanswered again (no answers left)
    assert (await john.say("no"))["said"] == [builtin.WONT]
    assert await Ticket.objects.filter(conversation_id=john.conversation_id).acount() == 1
    assert_valid_api_history(await stored_messages(john.conversation_id))


async def test_a_request_made_before_verifying_is_asked_for_right_after():
    john = await customer(True)
    assert (await john.say("open a new ticket: my parcel never arrived"))["said"] == [builtin.ASK_CREDENTIALS]
    turn = await john.say("username john_doe, api key key")
    assert turn["cards"][0]["summary"] == "Open a new support ticket: \u201cMy parcel never arrived\u201d"
    assert await Ticket.objects.filter(conversation_id=john.conversation_id).acount() == 1


def test_the_terminal_asks_the_card_as_a_question(demo_data, tmp_path):
    script = tmp_path / "messages.txt"
    script.write_text("username john_doe, api key key\nadd to 12345 that I paid\nyes\n", encoding="utf-8")
    out = io.StringIO()
    call_command("chat", replay=str(script), stdout=out, stderr=io.StringIO())
    lines = out.getvalue().splitlines()
    question = lines.index(
        "confirm: Add your comment to ticket 12345: \u201cI paid\u201d "
        "{'ticket_id': '12345', 'text': 'I paid'} (yes/no)"
    )
    assert lines[question + 1 : question + 3] == ["user: yes", "confirmation: approved"]
    assert lines[-1] == f"assistant: {builtin.COMMENTED.format(ticket_id='12345')} {builtin.ANYTHING_ELSE}"
    assert list(TicketComment.objects.values_list("text", flat=True)) == ["I paid"]


def test_the_decision_reads_only_the_messages():
    """The same phrasings, straight to ``decide`` (no database): what a hosted model would receive."""
    decision = builtin.decide([{"role": "user", "content": "username john_doe, api key key"}], TOOLS)
    assert decision.tool_calls == [("verify_user", {"username": "john_doe", "api_key": "key"})]
    decision = builtin.decide([{"role": "user", "content": "I lost my api key yesterday"}], TOOLS)
    assert decision.tool_calls == []
