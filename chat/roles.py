"""The two staff roles and exactly what each may do.

The data migration ``chat.0003_staff_roles`` creates them with a frozen copy of these sets;
``roles_ensure`` puts them back (after a test database flush, or if someone edited them in the admin).
"""

from __future__ import annotations

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Q

SUPPORT_STAFF = "Support staff"
OPERATORS = "Operators"
REVIEW_PERMISSION = "chat.review_conversation"

# group name -> "app_label.codename" permissions
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    SUPPORT_STAFF: frozenset(
        {
            *(f"tickets.{action}_{model}" for action in ("view", "add", "change", "delete")
              for model in ("ticket", "apikey", "customer")),
            "auth.view_user",
            "chat.view_conversation",
        }
    ),
    OPERATORS: frozenset(
        {
            "chat.view_conversation",
            "chat.view_turn",
            "chat.view_feedback",
            "chat.review_conversation",
            "tickets.view_ticket",
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
