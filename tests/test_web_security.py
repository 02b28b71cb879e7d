"""Django's own security defaults, held: production settings, headers, no inline script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": "x" * 20 + "-production-secret-key-for-tests-0123456789"}


def run_django(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")} | env
    environment["DJANGO_SETTINGS_MODULE"] = "supportsite.settings"
    script = f"import django; django.setup(); {code}"
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def test_production_settings_pass_the_deploy_check():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")} | PRODUCTION,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    result = run_django("print('started')", DJANGO_DEBUG="0")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_production_cookies_are_secure_and_http_only_with_hsts():
    code = (
        "from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_SECURE, "
        "s.SECURE_HSTS_SECONDS >= 31536000, s.SECURE_SSL_REDIRECT, s.X_FRAME_OPTIONS)"
    )
    result = run_django(code, **PRODUCTION)
    assert result.stdout.split() == ["True", "True", "True", "True", "True", "DENY"], result.stderr


@pytest.fixture
def pages(client, demo_data):
    anonymous = {
        "chat": client.get(reverse("chat")),
        "admin login": client.get(reverse("admin:login")),
    }
    client.force_login(User.objects.get(username="admin"))
    staff = {
        "admin index": client.get(reverse("admin:index")),
        "ticket list": client.get(reverse("admin:tickets_ticket_changelist")),
    }
    return anonymous | staff


def test_every_page_has_a_strict_content_security_policy(pages):
    for name, response in pages.items():
        assert response.status_code == 200, name
        policy = response.headers["Content-Security-Policy"]
        script_src = re.search(r"script-src ([^;]*)", policy).group(1)
        assert script_src.strip() == "'self'", (name, policy)
        assert "frame-ancestors 'none'" in policy, name
        assert response.headers["X-Frame-Options"] == "DENY", name
        assert response.headers["X-Content-Type-Options"] == "nosniff", name


def test_our_pages_carry_no_inline_script_or_handlers(pages):
    for name, response in pages.items():
        html = response.content.decode()
        inline = [tag for tag in re.findall(r"<script\b[^>]*>", html) if "src=" not in tag]
        inline = [tag for tag in inline if 'type="application/json"' not in tag]
        assert not inline, (name, inline)
        assert not re.search(r"\son[a-z]+\s*=", html), name


def test_the_chat_page_sets_an_http_only_session_cookie(client, db):
    response = client.post(reverse("chat"))  # the page's POST right before its socket makes the session
    cookie = response.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


def test_a_made_up_session_cookie_is_replaced(client, db):
    client.cookies["sessionid"] = "made-up-session-key-that-the-database-does-not-hold"
    response = client.post(reverse("chat"))
    assert response.cookies["sessionid"].value not in ("", "made-up-session-key-that-the-database-does-not-hold")
