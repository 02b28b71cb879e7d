"""Bad configuration fails ``manage.py check``, not the first customer."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from chat.checks import check_secret_finder, check_tools


def test_the_shipped_configuration_passes():
    call_command("check", stdout=io.StringIO())
    assert check_tools() == [] and check_secret_finder() == []


def test_a_misspelt_tool_path_fails_check(settings):
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, "tickets.tools.get_tiket_status"]
    assert [error.id for error in check_tools()] == ["chat.E001"]
    with pytest.raises(SystemCheckError, match="get_tiket_status"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def undescribable(first, second):
    """A function whose first parameter is not the tool context."""


def test_a_function_the_toolbox_cannot_describe_fails_check(settings):
    settings.CHAT_TOOLS = [*settings.CHAT_TOOLS, "tests.test_checks.undescribable"]
    errors = check_tools()
    assert [error.id for error in errors] == ["chat.E002"] and "context" in errors[0].msg


def test_a_secret_finder_that_does_not_import_fails_check(settings):
    settings.CHAT_SECRET_FINDER = "tickets.services.no_such_finder"
    assert [error.id for error in check_secret_finder()] == ["chat.E003"]


def test_django_setup_imports_neither_openai_nor_redis():
    """The read side (admin, operators' pages, commands) must not load the turn runtime."""
    code = "import sys, django; django.setup(); print(sorted(m for m in ('openai', 'redis') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


def test_the_model_clients_http_library_does_not_log_every_request():
    """One INFO line per model call (``HTTP Request: POST …``) drowned daphne's log; warnings still show."""
    for name in ("httpx", "httpx2"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
