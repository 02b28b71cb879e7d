"""Staff in a test client: logged in, and filling in admin forms as a browser would."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import Client


def inline_management_forms(replies: int = 0) -> dict[str, str]:
    """The ticket page's two comment inlines: the comments (read-only) and the reply form."""
    return {
        "comments-TOTAL_FORMS": "0", "comments-INITIAL_FORMS": "0",
        "comments-2-TOTAL_FORMS": str(replies), "comments-2-INITIAL_FORMS": "0",
    }


def as_user(username: str | None) -> Client:
    client = Client()
    if username:
        client.force_login(User.objects.get(username=username))
    return client
