"""Plain typed functions turned into tools the model may call.

A tool is a function whose first parameter is ``context: ToolContext`` (never shown to the model) and
whose other parameters are typed, optionally ``Annotated`` with a pydantic ``Field`` description. Its
docstring's first line describes it. The JSON schema comes from the signature through pydantic, and
the model's arguments are validated against it before the function runs. Parameters typed
``SecretStr`` are secrets: masked wherever the call is shown or stored.

A tool that changes data is marked ``@changes_data("plain words about {argument}")``: the agent loop
asks the customer first (``chat.agent.Confirmer``) and runs it only on their "yes"; ``Toolbox.run``
refuses it without that approval, whoever calls it.

A tool that cannot do what was asked raises ``ToolError``; whatever else goes wrong (unknown tool,
arguments that are not a JSON object, a missing or extra field, an exception inside the tool) becomes
an error too. Every error reaches the model as ``{"error": "…"}`` and is stored with the failure flag
(``ToolOutcome.is_error``); nothing runs on made-up arguments.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import re
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from django.conf import settings
from django.utils.module_loading import import_string
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, create_model

from chat.agent import ConfirmRequest, ToolCall, ToolOutcome
from chat.secrets import MASK

logger = logging.getLogger(__name__)


class ToolError(Exception):
    """Raised by a tool that cannot do what was asked; ``message`` is for the model, ``details`` join it."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def outcome(self, secrets: tuple[str, ...] = ()) -> ToolOutcome:
        result = {**self.details, "error": self.message}
        return ToolOutcome(content=json.dumps(result), is_error=True, result=result, secrets=secrets)


@dataclass
class ToolContext:
    """Who the tools act for. Set by the server, never by the model."""

    conversation_id: uuid.UUID
    customer_id: int | None = None
    client_address: str | None = None
    # Values a tool found to be secrets (beyond its secret parameters): masked like them everywhere.
    revealed: list[str] = field(default_factory=list)
    # Set by a tool after which the model must not be called again this turn (a handoff to a person).
    ends_turn: bool = False


NEEDS_APPROVAL = "Not run: {tool} changes data and runs only after the customer approves it."


@dataclass(frozen=True)
class ChangesData:
    """How a tool that changes data is put to the customer: ``summary`` is a ``str.format`` template over
    the call's arguments, in plain words; ``check(context, **arguments)``, when given, runs before asking
    and may raise ``ToolError`` (not verified, no such ticket): the customer is not asked in vain."""

    summary: str
    check: Callable[..., None] | None = None


F = TypeVar("F", bound=Callable[..., Any])


def changes_data(summary: str, *, check: Callable[..., None] | None = None) -> Callable[[F], F]:
    """Mark a tool as changing data: it runs only after the customer approved ``summary`` on their screen."""

    def mark(function: F) -> F:
        function.changes_data = ChangesData(summary, check)  # type: ignore[attr-defined]
        return function

    return mark


class ToolArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    function: Callable[..., Any]
    arguments: type[ToolArguments]
    secret_fields: frozenset[str]
    changes_data: ChangesData | None = None  # None: runs without asking

    @classmethod
    def from_function(cls, function: Callable[..., Any]) -> Tool:
        hints = get_type_hints(function, include_extras=True)
        parameters = list(inspect.signature(function).parameters.values())
        if not parameters or parameters[0].name != "context":
            raise TypeError(f"{function.__name__}: a tool's first parameter is 'context'.")
        fields: dict[str, Any] = {}
        for parameter in parameters[1:]:
            default = ... if parameter.default is inspect.Parameter.empty else parameter.default
            fields[parameter.name] = (hints[parameter.name], default)
        arguments = create_model(f"{function.__name__}_arguments", __base__=ToolArguments, **fields)
        secret_fields = frozenset(
            name for name, info in arguments.model_fields.items() if info.annotation is SecretStr
        )
        description = (inspect.getdoc(function) or function.__name__).splitlines()[0]
        marked = getattr(function, "changes_data", None)
        if marked is not None and not isinstance(marked, ChangesData):
            raise TypeError(f"{function.__name__}: mark tools that change data with @changes_data(summary).")
        if marked is not None:
            named = {field for _, field, _, _ in string.Formatter().parse(marked.summary) if field is not None}
            if unknown := named - set(fields):
                raise TypeError(f"{function.__name__}: its summary names no parameter {sorted(unknown)}.")
        return cls(function.__name__, description, function, arguments, secret_fields, marked)

    def raw_secrets(self, call: ToolCall) -> tuple[str, ...]:
        """The secret fields' string values in the call's arguments, before (or without) validation."""
        return secrets_in_arguments(call.arguments, self.secret_fields)

    @property
    def schema(self) -> dict[str, Any]:
        parameters = self.arguments.model_json_schema()
        parameters.pop("title", None)
        for spec in parameters.get("properties", {}).values():
            spec.pop("title", None)
        parameters["additionalProperties"] = False
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": parameters},
        }


class Toolbox:
    """The tools of one deployment, looked up by name. Runs synchronously: tools touch the database."""

    def __init__(self, functions: Iterable[Callable[..., Any]]) -> None:
        self.tools = {tool.name: tool for tool in map(Tool.from_function, functions)}
        self.schemas = [tool.schema for tool in self.tools.values()]
        self.secret_fields = frozenset(name for tool in self.tools.values() for name in tool.secret_fields)

    def _known_arguments(self, call: ToolCall) -> tuple[Tool, dict[str, Any]] | None:
        """The call's tool and its arguments, when it names a tool and they are a JSON object."""
        tool = self.tools.get(call.name)
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return None
        return (tool, arguments) if tool is not None and isinstance(arguments, dict) else None

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None:
        """The call's arguments as the customer and reviewers may see them (secret fields masked); None
        for a call that names no tool or whose arguments are not a JSON object: nothing of it is shown."""
        known = self._known_arguments(call)
        if known is None:
            return None
        tool, arguments = known
        return {key: MASK if key in tool.secret_fields else value for key, value in arguments.items()}

    def arguments_to_store(self, call: ToolCall) -> str:
        """What is stored and sent back to the model of the call's arguments: as written when they are a
        JSON object for a known tool, else ``{}`` (never text that may hold a secret no parser found)."""
        return call.arguments if self._known_arguments(call) is not None else "{}"

    def asks_first(self, call: ToolCall) -> bool:
        """Whether the call names a tool that changes data: only those have anything to ``prepare``."""
        tool = self.tools.get(call.name)
        return tool is not None and tool.changes_data is not None

    def prepare(self, call: ToolCall, context: ToolContext) -> ConfirmRequest | ToolOutcome | None:
        """For a call of a tool that changes data: what to ask the customer, or the outcome that answers
        the call without asking (arguments that do not validate, the tool's ``check`` failing). None for
        every other call: it simply runs."""
        if not self.asks_first(call):
            return None
        tool = self.tools[call.name]
        arguments = self._validated(tool, call)
        if isinstance(arguments, ToolOutcome):
            return arguments
        if tool.changes_data.check is not None:
            try:
                tool.changes_data.check(context, **dict(arguments))
            except ToolError as error:
                return error.outcome()
        shown = {name: MASK if name in tool.secret_fields else value for name, value in dict(arguments).items()}
        return ConfirmRequest(
            call_id=call.id,
            tool=tool.name,
            summary=tool.changes_data.summary.format_map(shown),
            arguments=shown,
        )

    def _validated(self, tool: Tool, call: ToolCall) -> ToolArguments | ToolOutcome:
        try:
            return tool.arguments.model_validate_json(call.arguments or "{}")
        except ValidationError as error:
            # The secrets of a call that fails validation are still masked wherever it is stored.
            return ToolOutcome.failure(f"Invalid arguments for {tool.name}: {_describe(error)}", tool.raw_secrets(call))

    def run(self, call: ToolCall, context: ToolContext, *, approved: bool = False) -> ToolOutcome:
        """Run the call for ``context``. A tool that changes data runs only when ``approved`` (the customer
        said yes to this very call: see ``chat.agent``); otherwise the call is answered with an error."""
        tool = self.tools.get(call.name)
        if tool is None:
            # A made-up tool's arguments named like any tool's secret parameter are secrets all the same.
            given = secrets_in_arguments(call.arguments, self.secret_fields)
            known = ", ".join(sorted(self.tools))
            return ToolOutcome.failure(f"There is no tool named {call.name!r}. The tools are: {known}.", given)
        if tool.changes_data is not None and not approved:
            return ToolOutcome.failure(NEEDS_APPROVAL.format(tool=tool.name))
        arguments = self._validated(tool, call)
        if isinstance(arguments, ToolOutcome):
            return arguments
        secrets = tuple(
            value.get_secret_value()
            for name in tool.secret_fields
            if isinstance(value := getattr(arguments, name), SecretStr)
        )
        revealed = len(context.revealed)
        try:
            result = tool.function(context, **dict(arguments))
        except ToolError as error:
            return error.outcome((*secrets, *context.revealed[revealed:]))
        except Exception:
            logger.exception("tool %s failed", tool.name)
            return ToolOutcome.failure(f"{tool.name} failed on our side. Apologise and try later.", secrets)
        secrets = (*secrets, *context.revealed[revealed:])
        return ToolOutcome(
            content=json.dumps(result), is_error=False, result=result, secrets=secrets, ends_turn=context.ends_turn
        )


_STRING_FIELD = re.compile(r'"(\w+)"\s*:\s*"((?:[^"\\]|\\.)*)')


def secrets_in_arguments(arguments: str, secret_fields: Iterable[str]) -> tuple[str, ...]:
    """The string values given to ``secret_fields`` in a call's arguments: from the JSON object, or, when
    the text is no JSON (a model's broken call), from every ``"field": "value`` it holds."""
    fields = frozenset(secret_fields)
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        return tuple(value for name, value in _STRING_FIELD.findall(arguments) if name in fields and value)
    if not isinstance(parsed, dict):
        return ()
    return tuple(parsed[name] for name in fields if isinstance(parsed.get(name), str) and parsed[name])


def _describe(error: ValidationError) -> str:
    """Pydantic's errors in one line the model can act on, never echoing the input."""
    if any(item["type"] in {"json_invalid", "model_type"} for item in error.errors()):
        return "the arguments must be a JSON object."
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        parts.append(f"{where}: {item['msg'].lower()}")
    return "; ".join(parts) + "."


@functools.cache
def get_toolbox() -> Toolbox:
    """The deployment's toolbox, built once from ``settings.CHAT_TOOLS`` (dotted paths of tool functions)."""
    return Toolbox(import_string(path) for path in settings.CHAT_TOOLS)
