"""Customers' API keys, their tickets, and the record of verification attempts."""

from django.conf import settings
from django.contrib.auth.models import User, UserManager
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q


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
    # The chat conversation the customer opened it from (create_ticket), if any.
    conversation_id = models.UUIDField(null=True, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return f"#{self.public_id} {self.issue}"


class TicketComment(models.Model):
    """A message on a ticket: the customer's words (through the chat) or staff's, public or an internal note.

    Customers are only ever shown public staff replies (``get_ticket_status``); internal notes stay in admin.
    """

    class Author(models.TextChoices):
        CUSTOMER = "customer"
        STAFF = "staff"

    ticket = models.ForeignKey(Ticket, on_delete=models.CASCADE, related_name="comments")
    author = models.CharField(max_length=16, choices=Author.choices)
    # The staff member who wrote it (None for the customer's comments, or a deleted account).
    staff_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    public = models.BooleanField(default=True, help_text="Shown to the customer; unticked: an internal note.")
    text = models.TextField(max_length=4000)
    # The chat conversation a customer's comment came from.
    conversation_id = models.UUIDField(null=True, blank=True, editable=False, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        kind = "note" if not self.public else "reply" if self.author == self.Author.STAFF else "comment"
        return f"{self.get_author_display()} {kind} on #{self.ticket.public_id}"


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


class Verification(models.Model):
    """A conversation verified as a customer by one of their keys.

    Ticket lookups hold only while the customer is active, that key is not revoked and the verification
    is younger than ``VERIFY_TTL_SECONDS``: rotating a customer's keys or deactivating them ends every
    conversation's access at once, whatever the conversation or the model believes.
    """

    conversation_id = models.UUIDField(db_index=True)
    customer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="verifications")
    # Null for a customer signed in by the company's website (chat.identity): no key was given, and
    # ``signer`` names the shared secret whose signature vouched for them (rotating it ends the access).
    api_key = models.ForeignKey(
        ApiKey, on_delete=models.CASCADE, related_name="verifications", null=True, blank=True
    )
    signer = models.CharField(max_length=16, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Exactly one ground: a key, or a website signature.
            models.CheckConstraint(
                condition=(Q(api_key__isnull=False) & Q(signer="")) | (Q(api_key__isnull=True) & ~Q(signer="")),
                name="verification_key_or_signature",
            )
        ]

    def __str__(self) -> str:
        return f"{self.conversation_id} as {self.customer_id} at {self.created_at:%Y-%m-%d %H:%M}"
