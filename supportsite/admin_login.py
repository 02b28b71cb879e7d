"""Brute-force protection of the staff login (``/admin/login/``) by django-axes.

Failures are counted per username *and* client address (the address ``supportsite.proxies`` resolved,
Django's ``REMOTE_ADDR``), so nobody can lock a staff member out from elsewhere.
"""

from __future__ import annotations

from typing import Any

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


class AdminLoginGuard(AxesStandaloneBackend):
    """Axes' lockout check for logins made by a request; a login with no request (a management command,
    a shell) has no client to lock out and goes straight to the next backend."""

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)
