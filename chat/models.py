"""A conversation and its append-only turns, stored so they replay to the model API exactly."""

import uuid

from django.conf import settings
from django.db import models


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session_key = models.CharField(max_length=40, db_index=True, editable=False)
    customer = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="conversations",
        help_text="The verified customer; set only by the verify_user tool.",
    )
    client_address = models.GenericIPAddressField(null=True, blank=True)
    # Keyed digests (never the values) of every secret given in this conversation: see chat.secrets.
    secret_digests = models.JSONField(default=list, blank=True, editable=False)
    # Who answers the customer now (chat.handoff); every change is a HandoffEvent row.
    holder = models.CharField(max_length=16, default="agent", db_index=True, editable=False)
    holder_staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    holder_since = models.DateTimeField(null=True, blank=True, editable=False)
    handoff_reason = models.CharField(max_length=500, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("review_conversation", "Can review transcripts"),
            ("handle_handoff", "Can take conversations over from the assistant"),
        ]

    def __str__(self) -> str:
        return f"Conversation {self.id} ({self.created_at:%Y-%m-%d %H:%M})"


class Turn(models.Model):
    """One message of a conversation, in the order it happened (``seq`` is unique within it).

    ``system``, ``user``, ``assistant`` and ``tool`` rows are what the model API receives;
    ``error`` rows record what went wrong for reviewers and are never sent to the model.
    """

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        ERROR = "error"

    # No index of its own: ``turn_unique_seq`` (conversation, seq) serves every lookup by conversation, and a
    # second index would only cost each of a turn's inserts another write.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns", db_index=False)
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=128, blank=True)
    name = models.CharField(max_length=64, blank=True, help_text="The tool that produced a tool result.")
    # For tool results: what the tool returned (``content`` is what the model was sent, maybe cut) and
    # whether the call failed. Readers use these, never the keys inside ``content``.
    result = models.JSONField(null=True, blank=True)
    is_error = models.BooleanField(default=False, help_text="A tool call that failed.")
    # For turns the model produced: which model, how long the call took, what it cost.
    model = models.CharField(max_length=128, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    is_fallback = models.BooleanField(default=False, help_text="A canned reply after too many model calls.")
    error_code = models.CharField(max_length=64, blank=True)
    # "staff": a support staff member's reply (``name`` is theirs as the customer saw it); "handoff": a note
    # that the holder changed (``result`` holds its frame's fields). Both are sent to the model as assistant
    # notes (chat.selectors.turn_as_message), so its history says a person spoke, and when they left.
    kind = models.CharField(max_length=16, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [models.UniqueConstraint(fields=["conversation", "seq"], name="turn_unique_seq")]

    def __str__(self) -> str:
        return f"{self.seq} {self.role}"


class Feedback(models.Model):
    """The customer's rating of a conversation: one per conversation, changed by rating again."""

    class Rating(models.TextChoices):
        UP = "up", "Thumbs up"
        DOWN = "down", "Thumbs down"

    conversation = models.OneToOneField(Conversation, on_delete=models.CASCADE, related_name="feedback")
    rating = models.CharField(max_length=8, choices=Rating.choices, db_index=True)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "feedback"
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on {self.conversation_id}"


class Confirmation(models.Model):
    """A tool call that changes data, waiting for (or given) the customer's answer.

    Only the customer's own socket decides one (``services.confirmation_decide``); the model can not. The
    row is also the card shown again after a reload while it is pending, and the record of who said what.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REFUSED = "refused"
        EXPIRED = "expired"  # not answered within CHAT_CONFIRM_TIMEOUT_SECONDS
        SUPERSEDED = "superseded"  # the customer wrote a message instead of answering

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="confirmations")
    tool_call_id = models.CharField(max_length=128)
    tool = models.CharField(max_length=64)
    frame = models.JSONField(help_text="The confirm frame as sent (secrets masked), for the replay.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]

    def __str__(self) -> str:
        return f"{self.tool} {self.state} in {self.conversation_id}"


# HANDING OVER TO A PERSON (chat.handoff): who holds a conversation, and every change of holder.


class Holder(models.TextChoices):
    """Who answers the customer: the assistant, nobody yet (waiting for a person), a person, or nobody."""

    AGENT = "agent", "Assistant"
    WAITING = "waiting", "Waiting for a person"
    HUMAN = "human", "A person"
    CLOSED = "closed", "Closed"


class HandoffEvent(models.Model):
    """One change of who holds a conversation: to which state, which staff member holds it now, who made
    the change (``actor``; None for the customer or the assistant) and why. Append-only."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="handoff_events")
    state = models.CharField(max_length=16, choices=Holder.choices)
    staff = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    staff_name = models.CharField(max_length=150, blank=True, help_text="As shown to the customer.")
    actor = models.CharField(max_length=16, help_text="customer, assistant, staff or system")
    reason = models.TextField(blank=True, max_length=500)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["conversation", "created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.conversation_id} → {self.state}"


class WaitingMessage(models.Model):
    """A customer message stored on arrival, waiting for its conversation's turn (on any process).

    The turn that runs takes the oldest one, in the same transaction that stores it as the user's
    ``Turn`` (masked) and deletes this row: a message is never lost with the process that received it,
    and is answered exactly once, in arrival order. The text is as typed until then (the model must be
    able to read a key typed before verification); it lives only until its turn starts.
    """

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="waiting_messages")
    text = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"waiting message {self.pk}"
