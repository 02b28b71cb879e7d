"""A conversation's secrets, and masking them on every path out. Django-free.

A conversation's secrets are every value ever given to a secret tool parameter (a valid call or not, a
successful verification or not) plus the verified customer's own API keys. The runtime holds them in a
``SecretKeeper`` for the turn: the raw values learnt this turn in memory, the earlier ones as keyed
digests (a raw secret is never stored), so a secret typed again or echoed later is still found. Rows are
masked before they are written, frames before they are sent (deltas a word at a time, so a secret split
across two pieces of a stream is still caught), and the model only ever receives stored, masked history.

A secret is masked wherever it stands as a whole token (not inside a longer word), quoted or not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

Message = dict[str, Any]
Frame = dict[str, Any]

MASK = "****"
# What could be a secret in free text: a run of characters without spaces, quotes or brackets.
TOKEN = re.compile(r"""[^\s"'“”‘’`,;()\[\]{}<>]{1,256}""")
_SENTENCE_END = ".!?:"


def tokens(text: str) -> list[str]:
    """The distinct candidate tokens of ``text``, each also without the full stop that may end a sentence."""
    found: dict[str, None] = {}
    for word in TOKEN.findall(text):
        found[word] = None
        found[word.rstrip(_SENTENCE_END)] = None
    found.pop("", None)
    return list(found)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """Replace each secret standing as a whole token, every time it stands there."""
    for secret in sorted(set(filter(None, secrets)), key=len, reverse=True):
        if secret in text:
            text = re.sub(rf"(?<![\w-]){re.escape(secret)}(?![\w-])", MASK, text)
    return text


def mask_value(value: Any, secrets: Iterable[str]) -> Any:
    """Every string at any depth with its secrets masked; keys are left alone."""
    secrets = list(secrets)
    if isinstance(value, str):
        return MASK if value in secrets else mask_text(value, secrets)
    if isinstance(value, dict):
        return {key: mask_value(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [mask_value(item, secrets) for item in value]
    return value


def mask_arguments(arguments: str, secrets: Iterable[str]) -> str:
    """Tool-call arguments (JSON text) with the secrets masked; text that is no JSON is masked as text."""
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return mask_text(arguments, secrets)
    return json.dumps(mask_value(parsed, secrets))


def mask_messages(messages: list[Message], secrets: Iterable[str]) -> list[Message]:
    """The messages with each secret masked in every role's text and in tool-call arguments."""
    secrets = [secret for secret in secrets if secret]
    if not secrets:
        return messages
    masked = []
    for message in messages:
        message = dict(message)
        if isinstance(message.get("content"), str) and message.get("role") != "system":
            message["content"] = mask_text(message["content"], secrets)
        if message.get("tool_calls"):
            message["tool_calls"] = [_masked_call(call, secrets) for call in message["tool_calls"]]
        masked.append(message)
    return masked


def _masked_call(call: Message, secrets: Iterable[str]) -> Message:
    arguments = mask_arguments(call["function"]["arguments"], secrets)
    return {**call, "function": {**call["function"], "arguments": arguments}}


class SecretKeeper:
    """The secrets of one conversation during a turn.

    ``known`` are raw values learnt in memory; ``is_secret`` tells whether a token is one of the secrets
    known only by digest (learnt in earlier turns, or the verified customer's keys). Its answer for a token
    cannot change during the turn, so each distinct token is asked once (a digest or two each): a reply's
    words are checked as deltas, again in its ``message`` frame and again as the row is stored.
    """

    VERDICTS_KEPT = 4096  # distinct tokens remembered per turn (a flood of new words starts the memory over)

    def __init__(self, *, is_secret: Callable[[str], bool] | None = None, known: Iterable[str] = ()) -> None:
        self.is_secret = is_secret
        self.known: list[str] = []
        self.learn(known)
        self._verdicts: dict[str, bool] = {}

    @property
    def empty(self) -> bool:
        """Nothing to look for yet: text may pass as it is."""
        return not self.known and self.is_secret is None

    def learn(self, values: Iterable[str]) -> list[str]:
        """Remember these secret values; returns the ones not known before."""
        new = [value for value in dict.fromkeys(values) if value and value not in self.known]
        self.known.extend(new)
        return new

    def found_in(self, text: str) -> list[str]:
        """The secrets standing in ``text``: the known ones, and tokens that are secrets by digest."""
        found = [secret for secret in self.known if secret in text]
        if self.is_secret is not None:
            found += [token for token in tokens(text) if token not in found and self._secret_by_digest(token)]
        return found

    def _secret_by_digest(self, token: str) -> bool:
        verdict = self._verdicts.get(token)
        if verdict is None:
            if len(self._verdicts) >= self.VERDICTS_KEPT:
                self._verdicts.clear()
            verdict = self._verdicts[token] = self.is_secret(token)
        return verdict

    def mask_text(self, text: str) -> str:
        return mask_text(text, self.found_in(text)) if text else text

    def mask_messages(self, messages: list[Message]) -> list[Message]:
        found = [secret for message in messages for secret in self.found_in(json.dumps(message, ensure_ascii=False))]
        return mask_messages(messages, found)

    def mask_frame(self, frame: Frame) -> Frame:
        """A frame as it may leave the server: every string in it with the secrets masked."""
        found = self.found_in(json.dumps(frame, ensure_ascii=False))
        return mask_value(frame, found) if found else frame


class MaskedStream:
    """Deltas masked a whole token at a time: a piece is held back until the token it ends in is complete.

    ``push`` returns what may be sent now; ``flush`` what is left when the stream ends.
    """

    def __init__(self, keeper: SecretKeeper) -> None:
        self.keeper = keeper
        self.pending = ""

    def push(self, text: str) -> str:
        if self.keeper.empty and not self.pending:
            return text
        self.pending += text
        cut = max(self.pending.rfind(" "), self.pending.rfind("\n"))
        if cut < 0:
            return ""
        ready, self.pending = self.pending[: cut + 1], self.pending[cut + 1 :]
        return self.keeper.mask_text(ready)

    def flush(self) -> str:
        ready, self.pending = self.pending, ""
        return self.keeper.mask_text(ready)
