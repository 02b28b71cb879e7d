"""What a customer's socket has shown of its conversation, so that a socket attaching while a turn runs
shows every stored step once: none lost between its replay and its first live frame, none twice.

THE RACE
A socket reads its conversation's replay, then joins the conversation's group; a turn (in this process or
another) stores its steps and sends their frames meanwhile. A frame sent between the read and the join
reached neither; a frame whose row was read with the replay and which was sent after the join came twice.

HOW IT IS CLOSED (``chat.consumers.ChatConsumer.connect``)
- Having joined, holding what it is handed, the socket reads the turns stored since its replay (a
  catch-up): a frame sent before the join shows a row stored before it, which that read finds.
- A frame of a stored row names it by ``seq``, its number in the conversation, live and replayed alike; a
  frame naming a row already shown is not sent again.
- Two steps are shown before they are stored (behind the model's next call): a tool step, and the words
  of a reply that calls tools. Live they cannot carry a ``seq``: they are known by their call's ``id``
  (the words by ``calls``, the ids of the calls they come with). Sent before the join and stored after the
  catch-up's read, they would still be missing: when a turn was running as the socket attached, its
  ``idle`` is preceded by one more catch-up. Until then each such step shown is counted, live or read, so
  the other copy is not sent (models that give no call ids repeat them: counted, not remembered once).

An operator's timeline socket (``chat.operators.consumers``) keeps the same record from the last row its
page shows (``upto``, the page's ``?after=``) and catches up once, as it joins.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable

from chat.protocol import Frame


def _unnumbered_step(frame: Frame) -> Hashable | None:
    """What names a step that is shown before it is stored: a tool call's end, or a reply's words."""
    if frame.get("type") == "tool" and frame.get("status") != "started":
        return ("tool", str(frame.get("id")))
    if frame.get("type") == "message" and frame.get("calls"):
        return ("calls", tuple(str(call) for call in frame["calls"]))
    return None


class Shown:
    """The rows (and cards) whose frames a socket has sent: from its replay, its catch-ups and live."""

    def __init__(self, replay: list[Frame], *, upto: int = 0) -> None:
        self.floor = upto  # rows up to this one are shown already (an operator's page, read before its socket)
        self.seqs: set[int] = set()
        self.cards: set[str] = set()
        self.catching_up = True  # a catch-up may still come (``caught_up``)
        self.live_steps: Counter[Hashable] = Counter()  # steps shown live, unnumbered, while catching up
        self.read_steps: Counter[Hashable] = Counter()  # steps shown by a catch-up, while catching up
        for frame in replay:
            self._new_row(frame)
        self.upto = max(self.seqs, default=upto)  # the replay's last row: a catch-up reads the rows after it

    def _new_row(self, frame: Frame) -> bool:
        """Whether the frame shows no row or card shown yet (which then counts as shown)."""
        seq = frame.get("seq")
        if seq is not None:
            if seq <= self.floor or seq in self.seqs:
                return False
            self.seqs.add(seq)
        if frame.get("type") == "confirm":
            card = str(frame.get("id"))
            if card in self.cards:
                return False
            self.cards.add(card)
        return True

    def fresh(self, frame: Frame) -> bool:
        """Whether a live frame shows something not shown yet; if so, it counts as shown from now on."""
        if not self._new_row(frame):
            return False
        if not self.catching_up or frame.get("seq") is not None:
            return True
        if frame.get("type") == "tool" and frame.get("status") == "started":
            return not self.read_steps[("tool", str(frame.get("id")))]  # its end was read: the start is old
        step = _unnumbered_step(frame)
        if step is None:
            return True
        if self.read_steps[step]:
            self.read_steps[step] -= 1
            return False
        self.live_steps[step] += 1
        return True

    def unshown(self, frames: list[Frame]) -> list[Frame]:
        """The frames a catch-up read that are not shown yet (each then counts as shown)."""
        kept = []
        for frame in frames:
            if not self._new_row(frame):
                continue
            step = _unnumbered_step(frame)
            if step is not None and self.live_steps[step]:
                self.live_steps[step] -= 1
                continue
            if step is not None:
                self.read_steps[step] += 1
            kept.append(frame)
        return kept

    def caught_up(self) -> None:
        """No catch-up is to come: the steps shown unnumbered need not be matched any more."""
        self.catching_up = False
        self.live_steps.clear()
        self.read_steps.clear()
