"""The agent loop: model → tool calls → tool results → model … until the model answers in words.

This module knows nothing of Django, Channels or the ``openai`` package. It talks to three small
interfaces: a ``ChatModel`` (``chat.llm`` provides them), a ``ToolRunner`` (the tools the model may
call) and a ``Transcript`` (where turns are stored). It runs alike from a socket, a terminal or a test.

Events go out through ``emit`` as the frames of ``chat.protocol``, each after what it shows is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from chat import protocol
from chat.history import cut_text, trim_history
from chat.protocol import CustomerError
from chat.secrets import mask_messages

logger = logging.getLogger(__name__)

FALLBACK_REPLY = (
    "I'm sorry, I couldn't finish that request. Could you say it again in other words? "
    "I can verify your account and check the status of your tickets."
)
TOO_MANY_CALLS = "Not run: at most {limit} tool calls are run per reply. Call it again if it is still needed."
# What the model reads when a tool that changes data was not approved (stored with the error flag).
NOT_APPROVED = {
    "refused": "Not run: the customer said no to this action. Do not call it again unless they ask for it.",
    "expired": "Not run: the customer did not answer the confirmation in time. Ask whether they still want it.",
    "superseded": "Not run: the customer wrote a new message instead of answering the confirmation. Read it.",
    "unavailable": "Not run: the customer could not be asked to confirm this action here.",
}

Message = dict[str, Any]
Emit = Callable[[protocol.Frame], Awaitable[None]]


class StoredMessage(dict):  # type: ignore[type-arg]
    """A message as the transcript stored it, and its number in the conversation (``seq``): the frames that
    show it carry the number, so a socket that attached meanwhile can tell a frame it has already shown."""

    def __init__(self, message: Message, seq: int) -> None:
        super().__init__(message)
        self.seq = seq


def numbered(message: Message) -> dict[str, int]:
    """The frame keys naming a stored message's row (none for a message not stored, or stored behind)."""
    seq = getattr(message, "seq", None)
    return {} if seq is None else {"seq": seq}


class ModelError(CustomerError):
    """The model could not answer. ``message`` is written for the customer; ``code`` for machines."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model wrote it

    def as_api(self, arguments: str | None = None) -> Message:
        """The call in the API's format, with ``arguments`` instead of the model's text when given."""
        arguments = self.arguments if arguments is None else arguments
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": arguments}}


@dataclass
class ModelReply:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    model: str = ""
    latency_ms: int = 0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call produced: ``content`` goes to the model, ``result`` to screens and the stored row,
    ``is_error`` says the call failed (stored as a flag beside the result)."""

    content: str
    is_error: bool
    result: Any = None
    secrets: tuple[str, ...] = ()
    ends_turn: bool = False  # no further model call this turn (the conversation went to a person)

    @classmethod
    def failure(cls, message: str, secrets: tuple[str, ...] = ()) -> ToolOutcome:
        """A failed call, told to the model as ``{"error": message}``."""
        result = {"error": message}
        return cls(content=json.dumps(result), is_error=True, result=result, secrets=secrets)


@dataclass(frozen=True)
class ConfirmRequest:
    """A tool call that changes data, put to the customer before it runs: ``summary`` in plain words,
    ``arguments`` as they may be shown (secret fields masked)."""

    call_id: str
    tool: str
    summary: str
    arguments: dict[str, Any]


ConfirmDecision = Literal["approved", "refused", "expired", "superseded", "unavailable"]


class Confirmer(Protocol):
    """Asks the customer, and nobody else, whether a call may run; nothing the model writes can answer."""

    async def confirm(self, request: ConfirmRequest) -> ConfirmDecision: ...


class ChatModel(Protocol):
    name: str

    async def complete(
        self, messages: list[Message], tools: list[Message], on_delta: Callable[[str], Awaitable[None]]
    ) -> ModelReply: ...


class ToolRunner(Protocol):
    schemas: list[Message]

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None: ...

    def arguments_to_store(self, call: ToolCall) -> str: ...

    async def run(self, call: ToolCall, *, approved: bool = False) -> ToolOutcome: ...

    async def prepare(self, call: ToolCall) -> ConfirmRequest | ToolOutcome | None:
        """What to ask before a call that changes data runs (None: run it; an outcome: answers it unrun).
        Optional: a runner without it has no tool that changes data."""
        ...


class Transcript(Protocol):
    async def append(
        self,
        messages: list[Message],
        *,
        reply: ModelReply | None = None,
        outcomes: Mapping[str, ToolOutcome] | None = None,
        secrets: Iterable[str] = (),
        fallback: bool = False,
        behind: bool = False,
    ) -> list[Message]:
        """Store ``messages`` and return them as stored (secrets masked): what screens may show.

        ``behind``: nothing shows these messages until the turn's next store, so the write may still be
        going on when this returns (the model is called meanwhile); it is done before any later ``append``
        or ``record_error`` of the turn (which raise what it raised), and before the turn ends."""
        ...

    async def record_error(self, code: str, message: str) -> int | None:
        """Store the failure; its number in the conversation (``seq``) when the transcript numbers rows."""
        ...


@dataclass(frozen=True)
class TurnResult:
    # "handed_off": a tool ended the turn for a person; "held": a person holds it, no model was called.
    outcome: Literal["answered", "fallback", "error", "handed_off", "held"]
    model_calls: int


@dataclass(frozen=True)
class Bounds:
    """What one turn may cost (None: unbounded)."""

    max_model_calls: int = 8
    max_tool_calls_per_reply: int | None = None
    max_tool_result_chars: int | None = None
    history_token_budget: int | None = None


async def run_turn(
    *,
    model: ChatModel,
    tools: ToolRunner,
    transcript: Transcript,
    history: list[Message],
    emit: Emit,
    customer_text: str | None = None,
    customer_stored: Message | None = None,
    bounds: Bounds = Bounds(),
    model_reads_typed_text: bool = False,
    confirmer: Confirmer | None = None,
) -> TurnResult:
    """Answer one customer message (or greet, when ``customer_text`` is None).

    ``history`` is the stored conversation in API format, system prompt first; it is extended in place.
    The customer's message is stored (secrets masked) before anyone is shown it; the model reads it as
    stored, or as typed when ``model_reads_typed_text`` (before verification, the key it must pass to a
    tool may be one already given once); ``customer_stored``, when given, is the message as the caller already
    stored it in the step that started the turn. A model failure is stored as an error turn and reported
    through ``emit``; what was stored before it stays, and the history stays valid.

    At most ``bounds.max_tool_calls_per_reply`` calls of one model response run, the others are answered
    with an error and never run; a longer tool result than ``bounds.max_tool_result_chars`` is cut with a
    note; the model receives ``trim_history(history, bounds.history_token_budget)``; the whole is stored.

    A call of a tool that changes data runs only if ``confirmer`` returns "approved" for it; otherwise it
    is answered with ``NOT_APPROVED[decision]`` (an error result the model reads) and never runs.
    """
    if customer_text is not None:
        message = {"role": "user", "content": customer_text}
        (stored,) = [customer_stored] if customer_stored is not None else await transcript.append([message])
        history.append(message if model_reads_typed_text else stored)
        await emit(protocol.message("user", stored["content"], **numbered(stored)))
    await emit(protocol.typing())

    async def on_delta(text: str) -> None:
        await emit(protocol.delta(text))

    for call_number in range(1, bounds.max_model_calls + 1):
        try:
            reply = await model.complete(trim_history(history, bounds.history_token_budget), tools.schemas, on_delta)
        except ModelError as error:
            logger.warning("model call failed: %s", error)
            seq = await transcript.record_error(error.code, error.message)
            await emit({**error.frame(), **({"seq": seq} if seq is not None else {})})
            return TurnResult("error", call_number)
        if not reply.tool_calls:
            message = {"role": "assistant", "content": reply.content}
            (stored,) = await transcript.append([message], reply=reply)
            history.append(stored)
            await emit(protocol.message("assistant", stored["content"], **numbered(stored)))
            return TurnResult("answered", call_number)
        ended = await _answer_tool_calls(
            reply, tools=tools, transcript=transcript, history=history, emit=emit, bounds=bounds, confirmer=confirmer
        )
        if ended:
            return TurnResult("handed_off", call_number)

    message = {"role": "assistant", "content": FALLBACK_REPLY}
    (stored,) = await transcript.append([message], fallback=True)
    history.append(message)
    await emit(protocol.message("assistant", FALLBACK_REPLY, fallback=True, **numbered(stored)))
    return TurnResult("fallback", bounds.max_model_calls)


async def _answer_tool_calls(
    reply: ModelReply,
    *,
    tools: ToolRunner,
    transcript: Transcript,
    history: list[Message],
    emit: Emit,
    bounds: Bounds,
    confirmer: Confirmer | None = None,
) -> bool:
    """Run the tool calls of ``reply`` in order (the first ``max_tool_calls_per_reply``; the rest are
    answered with an error and never run), then store the call and all its results at once: every call
    id is answered. True when a tool ended the turn (``ToolOutcome.ends_turn``)."""
    if reply.content:  # named by its calls: its row is stored with their results, after they run
        await emit(protocol.message("assistant", reply.content, calls=[call.id for call in reply.tool_calls]))
    outcomes: dict[str, ToolOutcome] = {}
    limit = bounds.max_tool_calls_per_reply
    for number, call in enumerate(reply.tool_calls):
        if limit is not None and number >= limit:
            outcome = ToolOutcome.failure(TOO_MANY_CALLS.format(limit=limit))
        else:
            outcome = await _run_call(call, tools=tools, emit=emit, confirmer=confirmer)
        outcomes[call.id] = outcome
        frame = protocol.tool_finished(call_id=call.id, name=call.name, failed=outcome.is_error, result=outcome.result)
        await emit(frame)
    secrets = [secret for outcome in outcomes.values() for secret in outcome.secrets]
    assistant = {"role": "assistant", "content": reply.content or None}
    assistant["tool_calls"] = [call.as_api(tools.arguments_to_store(call)) for call in reply.tool_calls]
    results = [
        {"role": "tool", "tool_call_id": call_id, "content": cut_text(outcome.content, bounds.max_tool_result_chars)}
        for call_id, outcome in outcomes.items()
    ]
    # Behind: the calls were shown as they ran, and the next model call need not wait for the write.
    stored = await transcript.append(
        [assistant, *results], reply=reply, outcomes=outcomes, secrets=secrets, behind=True
    )
    history[:] = [*mask_messages(history, secrets), *stored]  # the model never again receives a secret learnt
    return any(outcome.ends_turn for outcome in outcomes.values())


async def _run_call(call: ToolCall, *, tools: ToolRunner, emit: Emit, confirmer: Confirmer | None) -> ToolOutcome:
    """One call: asked first when it changes data (run only on "approved"), else run at once."""
    prepare = getattr(tools, "prepare", None)  # runners written before confirmations have no such tools
    prepared = await prepare(call) if prepare is not None else None
    if isinstance(prepared, ConfirmRequest):
        decision: ConfirmDecision = await confirmer.confirm(prepared) if confirmer is not None else "unavailable"
        if decision != "approved":
            result = {"error": NOT_APPROVED[decision], "confirmation": decision}
            return ToolOutcome(content=json.dumps(result), is_error=True, result=result)
    await emit(protocol.tool_started(call_id=call.id, name=call.name, arguments=tools.display_arguments(call)))
    if isinstance(prepared, ToolOutcome):
        return prepared
    return await tools.run(call, approved=True) if isinstance(prepared, ConfirmRequest) else await tools.run(call)
