"""Customers signed in by the company's own website (identity verification, as Intercom's).

The website computes ``HMAC-SHA256(CHAT_IDENTITY_SECRET, username)`` (hex) on its server and gives it to
the widget with the username. A matching signature vouches for that customer exactly as a valid API key
does; anything else vouches for nobody. Without ``CHAT_IDENTITY_SECRET`` nothing is ever valid.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.contrib.auth.models import User

MAX_USERNAME_CHARS = 150


def signature_for(username: str, secret: str | None = None) -> str:
    """The signature the website sends for ``username`` (what its own server computes)."""
    key = (secret if secret is not None else settings.CHAT_IDENTITY_SECRET or "").encode()
    return hmac.new(key, username.encode(), hashlib.sha256).hexdigest()


def current_signer() -> str:
    """A short fingerprint of the shared secret, stored with each signed verification: after the secret
    is rotated, verifications made with the old one no longer hold. Empty when signing is off."""
    secret = settings.CHAT_IDENTITY_SECRET
    if not secret:
        return ""
    return hashlib.sha256(b"chat-identity-signer:" + secret.encode()).hexdigest()[:16]


def signature_valid(*, username: str, signature: str) -> bool:
    """Whether ``signature`` is the website's signature of ``username``; constant-time, no query."""
    if not settings.CHAT_IDENTITY_SECRET or not username or len(username) > MAX_USERNAME_CHARS:
        return False
    return hmac.compare_digest(signature_for(username).encode(), signature.strip().lower().encode())


def signed_customer(*, username: str, signature: str) -> User | None:
    """The active customer (never staff) the website signed in as ``username``, or None."""
    if not signature_valid(username=username, signature=signature):
        return None
    return User.objects.filter(username=username, is_active=True, is_staff=False, is_superuser=False).first()
