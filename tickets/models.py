"""Customers' API keys, their tickets, and the record of verification attempts."""

from django.conf import settings
from django.contrib.auth.models import User, UserManager
from django.core.validators import RegexValidator
from django.db import models


class CustomerManager(UserManager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(is_staff=False, is_superuser=False)


class Customer(User):
    """A Django user who is not staff: the person on the other side of the chat."""

    objects = CustomerManager()

    class Meta:
        proxy = True
        verbose_name = "customer"


class ApiKey(models.Model):
    """A customer's API key, kept only as a keyed hash (HMAC-SHA256) and a short visible prefix."""

    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=12, blank=True, help_text="The key's first characters, to tell keys apart.")
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix or '(short key)'}… ({'revoked' if self.revoked_at else 'active'})"


TICKET_ID_VALIDATOR = RegexValidator(r"^[0-9]{3,20}$", "A ticket id is 3 to 20 digits 0-9.")


class Ticket(models.Model):
    class Status(models.TextChoices):
        OPEN = "Open"
        IN_PROGRESS = "In progress"
        WAITING_ON_CUSTOMER = "Waiting on customer"
        RESOLVED = "Resolved"
        CLOSED = "Closed"

    public_id = models.CharField("ticket id", max_length=20, unique=True, validators=[TICKET_ID_VALIDATOR])
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tickets")
    status = models.CharField(max_length=32, choices=Status.choices, default=Status.OPEN, db_index=True)
    issue = models.CharField(max_length=120, help_text="The issue in a few words.")
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"#{self.public_id} {self.issue}"


class VerificationAttempt(models.Model):
    """One call of ``verify_user``; failures within a window lock verification for a cool-off."""

    username = models.CharField(max_length=150, db_index=True)
    conversation_id = models.UUIDField(db_index=True)
    client_address = models.GenericIPAddressField(null=True, blank=True, db_index=True)
    succeeded = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.username} {'ok' if self.succeeded else 'failed'} at {self.created_at:%Y-%m-%d %H:%M}"
