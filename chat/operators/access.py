"""Who may review: the two staff roles, exactly what each may do, and the one check every door uses.

The data migration ``chat.0003_staff_roles`` creates the roles with a frozen copy of these sets;
``roles_ensure`` puts them back (after a test database flush, or if someone edited them in the admin).
``may_review`` is the only test of the review right: the pages (``reviewer_required``) and the live
operator socket both ask it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import user_passes_test
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q

SUPPORT_STAFF = "Support staff"
OPERATORS = "Operators"
REVIEW_PERMISSION = "chat.review_conversation"
HANDOFF_PERMISSION = "chat.handle_handoff"  # the inbox: take a conversation over from the assistant

# group name -> "app_label.codename" permissions
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    SUPPORT_STAFF: frozenset(
        {
            *(f"tickets.{action}_{model}" for action in ("view", "add", "change", "delete")
              for model in ("ticket", "apikey", "customer")),
            "auth.view_user",
            "chat.view_conversation",
            "chat.view_turn",  # reading a conversation in admin means reading its turns
            "tickets.view_ticketcomment",
            "tickets.add_ticketcomment",  # answering the customer on the ticket's page
            "tickets.view_verificationattempt",
            "tickets.delete_verificationattempt",
            HANDOFF_PERMISSION,
        }
    ),
    OPERATORS: frozenset(
        {
            "chat.view_conversation",
            "chat.view_turn",
            "chat.view_feedback",
            "chat.review_conversation",
            "tickets.view_ticket",
            "tickets.view_ticketcomment",
        }
    ),
}


@transaction.atomic
def roles_ensure() -> None:
    """Create both groups if missing and give each exactly its permissions."""
    for name, wanted in ROLE_PERMISSIONS.items():
        query = Q()
        for dotted in wanted:
            app_label, codename = dotted.split(".")
            query |= Q(content_type__app_label=app_label, codename=codename)
        permissions = list(Permission.objects.filter(query))
        if len(permissions) != len(wanted):
            raise LookupError(f"missing permissions for {name!r}: run migrate first")
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)


def may_review(user: Any) -> bool:
    """True when ``user`` is an active, logged-in staff member holding the review permission.

    ``has_perm`` caches a user's permissions on the object: to see a change, pass a freshly loaded user.
    """
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(REVIEW_PERMISSION)
    )


def may_handle(user: Any) -> bool:
    """True when ``user`` is an active, logged-in staff member who may take conversations over (the inbox,
    its sockets, every claim, reply, hand-back and close). The same caching caveat as ``may_review``."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm(HANDOFF_PERMISSION)
    )


def _may_handle_or_forbidden(user: Any) -> bool:
    if may_handle(user):
        return True
    if user.is_authenticated:
        raise PermissionDenied
    return False


handler_required = user_passes_test(_may_handle_or_forbidden)
"""View decorator for the inbox: as ``reviewer_required``, for ``may_handle``."""


def _may_review_or_forbidden(user: Any) -> bool:
    # False sends the visitor to the login page; someone already logged in gets 403 instead, since
    # logging in again would not give them the right.
    if may_review(user):
        return True
    if user.is_authenticated:
        raise PermissionDenied
    return False


reviewer_required = user_passes_test(_may_review_or_forbidden)
"""View decorator: anonymous visitors go to the login page; logged-in users without the right get 403."""
