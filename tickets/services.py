"""Writes and checks for customers' API keys and verification attempts."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tickets.models import ApiKey, VerificationAttempt

KEY_PREFIX = "sk_"
# Compared against when the username has no key, so an unknown name costs the same work as a wrong key.
_NO_KEY_DIGEST = "0" * 64


def apikey_digest(raw_key: str) -> str:
    return hmac.new(settings.API_KEY_SECRET.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


# What could be a key in free text: a run of characters without spaces, quotes or brackets.
_KEY_CANDIDATE = re.compile(r"""[^\s"'“”‘’`,;()\[\]{}<>]{1,256}""")


def apikey_finder(customer_id: int) -> Callable[[str], list[str]]:
    """A function giving the words of a text that are one of the customer's active API keys.

    One query now, none per call: each word costs one HMAC (about 2 µs), so a key the customer types
    again after verification, or that a model echoes, is found and can be masked before it is stored.
    """
    digests = set(
        ApiKey.objects.filter(customer_id=customer_id, revoked_at__isnull=True).values_list("digest", flat=True)
    )

    def find(text: str) -> list[str]:
        if not digests:
            return []
        found: dict[str, None] = {}
        for word in dict.fromkeys(_KEY_CANDIDATE.findall(text)):
            for candidate in (word, word.rstrip(".!?:")):  # the sentence's full stop is not the key's
                if candidate and apikey_digest(candidate) in digests:
                    found[candidate] = None
        return list(found)

    return find


def apikey_visible_prefix(raw_key: str) -> str:
    """Enough of a generated key to tell keys apart; nothing of a short, hand-set one."""
    return raw_key[: len(KEY_PREFIX) + 6] if len(raw_key) >= 24 else ""


@transaction.atomic
def apikey_issue(*, customer: User, raw_key: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``customer``; returns it with the raw key, which is never stored or shown again."""
    raw_key = raw_key or KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        customer=customer, prefix=apikey_visible_prefix(raw_key), digest=apikey_digest(raw_key)
    )
    return key, raw_key


@transaction.atomic
def apikey_rotate(*, customer: User) -> tuple[ApiKey, str]:
    """Revoke every active key of ``customer`` and issue a new one."""
    ApiKey.objects.filter(customer=customer, revoked_at__isnull=True).update(revoked_at=timezone.now())
    return apikey_issue(customer=customer)


def customer_authenticate(*, username: str, raw_key: str) -> User | None:
    """The active customer whose username and API key these are, or None. Constant-time compare."""
    digest = apikey_digest(raw_key)
    candidates = list(
        ApiKey.objects.filter(
            customer__username=username,
            customer__is_active=True,
            customer__is_staff=False,
            customer__is_superuser=False,
            revoked_at__isnull=True,
        ).values_list("id", "customer_id", "digest")
    )
    match = None
    for key_id, customer_id, stored in candidates or [(None, None, _NO_KEY_DIGEST)]:
        if hmac.compare_digest(stored, digest) and key_id is not None:
            match = (key_id, customer_id)
    if match is None:
        return None
    ApiKey.objects.filter(id=match[0]).update(last_used_at=timezone.now())
    return User.objects.get(id=match[1])


def verification_locked(*, username: str, conversation_id: object, client_address: str | None) -> bool:
    """Whether recent failures for this username, conversation or address pause verification."""
    since = timezone.now() - timedelta(seconds=settings.VERIFY_LOCKOUT_SECONDS)
    failures = VerificationAttempt.objects.filter(succeeded=False, created_at__gte=since)
    limit = settings.VERIFY_MAX_FAILURES
    if failures.filter(Q(username=username) | Q(conversation_id=conversation_id)).count() >= limit:
        return True
    if client_address:
        return failures.filter(client_address=client_address).count() >= settings.VERIFY_MAX_FAILURES_PER_ADDRESS
    return False


def verification_attempt_record(
    *, username: str, conversation_id: object, client_address: str | None, succeeded: bool
) -> None:
    VerificationAttempt.objects.create(
        username=username, conversation_id=conversation_id, client_address=client_address, succeeded=succeeded
    )
