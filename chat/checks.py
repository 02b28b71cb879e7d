"""System checks: bad configuration fails ``manage.py check`` (and every server start), not the first customer.

Like ``django.contrib.admin``'s checks, these import every dotted path the chat is configured with and
build what the turn runtime would build from it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from chat.toolbox import Toolbox


@register()
def check_tools(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every ``CHAT_TOOLS`` path imports, and the toolbox can describe every function it names."""
    errors: list[Error] = []
    functions = []
    for path in settings.CHAT_TOOLS:
        try:
            functions.append(import_string(path))
        except ImportError as error:
            errors.append(Error(f"CHAT_TOOLS: cannot import {path!r}: {error}", id="chat.E001"))
    if errors:
        return errors
    try:
        Toolbox(functions)
    except Exception as error:  # any failure to describe a tool is a configuration error
        errors.append(Error(f"CHAT_TOOLS: the toolbox cannot describe a tool: {error}", id="chat.E002"))
    return errors


@register()
def check_secret_finder(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """``CHAT_SECRET_FINDER`` names a callable, when set."""
    path = settings.CHAT_SECRET_FINDER
    if not path:
        return []
    try:
        finder = import_string(path)
    except ImportError as error:
        return [Error(f"CHAT_SECRET_FINDER: cannot import {path!r}: {error}", id="chat.E003")]
    if not callable(finder):
        return [Error(f"CHAT_SECRET_FINDER: {path!r} is not callable.", id="chat.E004")]
    return []


@register()
def check_support_hours(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """``HANDOFF_SUPPORT_HOURS`` reads as days and hours (``chat.handoff.parse_support_hours``)."""
    from chat.handoff import parse_support_hours  # loads models: only once the app registry is ready

    try:
        parse_support_hours(settings.HANDOFF_SUPPORT_HOURS or "")
    except ValueError as error:
        return [Error(f"HANDOFF_SUPPORT_HOURS: {error}", id="chat.E005")]
    return []
