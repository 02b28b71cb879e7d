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
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [("review_conversation", "Can review transcripts")]

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

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=128, blank=True)
    name = models.CharField(max_length=64, blank=True, help_text="The tool that produced a tool result.")
    # For turns the model produced: which model, how long the call took, what it cost.
    model = models.CharField(max_length=128, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    is_fallback = models.BooleanField(default=False, help_text="A canned reply after too many model calls.")
    error_code = models.CharField(max_length=64, blank=True)
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
