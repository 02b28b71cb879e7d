"""The wire format of ``/ws/chat/``: one constructor per frame the server sends, and the one error type a
customer is ever shown. Django-free: the agent loop, the runtime, the consumer and the replay all build
their frames here, so a live turn and its replay cannot drift apart.

The frames are the public contract's (``../shared/contract.md``); extra keys extend it, never rename it.
"""

from __future__ import annotations

from typing import Any

Frame = dict[str, Any]


class CustomerError(Exception):
    """What went wrong, told to the customer: ``code`` for machines, ``message`` for people.

    ``refused`` marks a request that was not taken (a bad frame, a rate limit): the turn that may be
    running goes on, and the page keeps waiting for it.
    """

    def __init__(self, code: str, message: str, *, refused: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.refused = refused

    def frame(self) -> Frame:
        return error(self.code, self.message, refused=self.refused)


def conversation(conversation_id: object, *, resumed: bool) -> Frame:
    return {"type": "conversation", "id": str(conversation_id), "resumed": resumed}


def delta(text: str) -> Frame:
    return {"type": "delta", "text": text}


def message(role: str, text: str, **extra: Any) -> Frame:
    """A whole message: ``role`` is ``user`` or ``assistant`` (``fallback``, ``replay`` … as extras)."""
    return {"type": "message", "role": role, "text": text, **extra}


def tool_started(*, call_id: str, name: str, arguments: dict[str, Any] | None) -> Frame:
    return {"type": "tool", "name": name, "id": call_id, "status": "started", "arguments": arguments}


def tool_finished(*, call_id: str, name: str, failed: bool, result: Any, **extra: Any) -> Frame:
    """A tool call's end: ``status`` comes from the stored failure flag, never from the result's keys."""
    status = "error" if failed else "done"
    return {"type": "tool", "name": name, "id": call_id, "status": status, "result": result, **extra}


def confirm(*, confirm_id: str, tool: str, summary: str, arguments: dict[str, Any], **extra: Any) -> Frame:
    """A tool call that changes data, waiting for the customer's ``{"type": "confirm", "id", "approve"}``."""
    return {"type": "confirm", "id": confirm_id, "tool": tool, "summary": summary, "arguments": arguments, **extra}


def confirmation(*, confirm_id: str, state: str) -> Frame:
    """What became of a confirm card: ``approved``, ``refused``, ``expired`` or ``superseded``."""
    return {"type": "confirmation", "id": confirm_id, "state": state}


def error(code: str, message: str, *, refused: bool = False, **extra: Any) -> Frame:
    frame: Frame = {"type": "error", "code": code, "message": message, **extra}
    if refused:
        frame["refused"] = True
    return frame


def handoff(state: str, message: str, **extra: Any) -> Frame:
    """Who holds the conversation changed: ``state`` is ``waiting``, ``human``, ``agent`` or ``closed``;
    ``message`` tells the customer in words; ``name`` (the staff member) when ``human``, ``position`` in the
    queue (and ``online``: anyone from support has the console open) when ``waiting``."""
    return {"type": "handoff", "state": state, "message": message, **extra}


def typing() -> Frame:
    return {"type": "typing"}


def idle() -> Frame:
    return {"type": "idle"}


def replayed(frame: Frame) -> Frame:
    """The frame as sent again after a reload: marked so the page does not treat it as live."""
    return {**frame, "replay": True}


def model_status(state: str) -> Frame:
    """Whether the assistant can answer now: ``model`` is ``up`` or ``down`` (``chat.modelstatus``)."""
    return {"type": "status", "model": state}
