"""Plain typed functions turned into tools the model may call.

A tool is a function whose first parameter is ``context: ToolContext`` (never shown to the model) and
whose other parameters are typed, optionally ``Annotated`` with a pydantic ``Field`` description. Its
docstring's first line describes it. The JSON schema comes from the signature through pydantic, and
the model's arguments are validated against it before the function runs. Parameters typed
``SecretStr`` are secrets: masked wherever the call is shown or stored.

Whatever goes wrong (unknown tool, arguments that are not a JSON object, a missing or extra field,
an exception inside the tool) becomes an error the model can read; nothing runs on made-up arguments.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, create_model

from chat.agent import MASK, ToolCall, ToolOutcome

logger = logging.getLogger(__name__)


@dataclass
class ToolContext:
    """Who the tools act for. Set by the server, never by the model."""

    conversation_id: uuid.UUID
    customer_id: int | None = None
    client_address: str | None = None


class ToolArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, str_strip_whitespace=True)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    function: Callable[..., Any]
    arguments: type[ToolArguments]
    secret_fields: frozenset[str]

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
        return cls(function.__name__, description, function, arguments, secret_fields)

    def raw_secrets(self, call: ToolCall) -> tuple[str, ...]:
        """The secret fields' string values in the call's arguments, before (or without) validation."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return ()
        if not isinstance(arguments, dict):
            return ()
        return tuple(arguments[name] for name in self.secret_fields if isinstance(arguments.get(name), str))

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


def error_outcome(message: str, secrets: tuple[str, ...] = ()) -> ToolOutcome:
    return ToolOutcome(content=json.dumps({"error": message}), ok=False, result={"error": message}, secrets=secrets)


class Toolbox:
    """The tools of one deployment, looked up by name. Runs synchronously: tools touch the database."""

    def __init__(self, functions: Iterable[Callable[..., Any]]) -> None:
        self.tools = {tool.name: tool for tool in map(Tool.from_function, functions)}
        self.schemas = [tool.schema for tool in self.tools.values()]

    def display_arguments(self, call: ToolCall) -> dict[str, Any] | None:
        """The call's arguments as the customer and reviewers may see them: secrets masked."""
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return None
        if not isinstance(arguments, dict):
            return None
        tool = self.tools.get(call.name)
        secret_fields = tool.secret_fields if tool else frozenset()
        return {key: MASK if key in secret_fields else value for key, value in arguments.items()}

    def run(self, call: ToolCall, context: ToolContext) -> ToolOutcome:
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools))
            return error_outcome(f"There is no tool named {call.name!r}. The tools are: {known}.")
        try:
            arguments = tool.arguments.model_validate_json(call.arguments or "{}")
        except ValidationError as error:
            # The secrets of a call that fails validation are still masked wherever it is stored.
            return error_outcome(f"Invalid arguments for {tool.name}: {_describe(error)}", tool.raw_secrets(call))
        secrets = tuple(
            value.get_secret_value()
            for name in tool.secret_fields
            if isinstance(value := getattr(arguments, name), SecretStr)
        )
        try:
            result = tool.function(context, **dict(arguments))
        except Exception:
            logger.exception("tool %s failed", tool.name)
            return ToolOutcome(
                content=json.dumps({"error": f"{tool.name} failed on our side. Apologise and try later."}),
                ok=False,
                result={"error": "failed"},
                secrets=secrets,
            )
        ok = not (isinstance(result, dict) and "error" in result)
        return ToolOutcome(content=json.dumps(result), ok=ok, result=result, secrets=secrets)


def _describe(error: ValidationError) -> str:
    """Pydantic's errors in one line the model can act on, never echoing the input."""
    if any(item["type"] in {"json_invalid", "model_type"} for item in error.errors()):
        return "the arguments must be a JSON object."
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        parts.append(f"{where}: {item['msg'].lower()}")
    return "; ".join(parts) + "."
