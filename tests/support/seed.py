"""The contract's demo data and the seed conversation's customer messages."""

from __future__ import annotations

import io

from django.core.management import call_command

SEED_MESSAGES = [
    "Hi there, my username is john_doe, can you help me check the status for my ticket?",
    'Sure, my username is "john_doe" and my API key is: "key"',
    "Yea it's: 12345",
    "That's it, thanks.",
]
STAFF_PASSWORD = "browser-test-password-1"


def seed_demo(password: str = STAFF_PASSWORD) -> None:
    """john_doe/key (12345 Open, 67890 Closed), jane_roe/jane-key (24680), the three staff accounts."""
    call_command("seed_demo", password=password, stdout=io.StringIO())
