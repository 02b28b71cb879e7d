"""``python manage.py seed_demo``: the demo customers, tickets and staff accounts. Idempotent."""

from __future__ import annotations

import secrets

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from chat.operators.access import roles_ensure
from tickets.models import ApiKey, Ticket
from tickets.services import apikey_digest, apikey_issue

CUSTOMERS = {
    "john_doe": ("key", [("12345", "Open", "Billing Query"), ("67890", "Closed", "Technical Support")]),
    "jane_roe": ("jane-key", [("24680", "In progress", "Password reset")]),
}
STAFF = {
    # username: (is_superuser, group)
    "admin": (True, None),
    "staff": (False, "Support staff"),
    "operator": (False, "Operators"),
}


class Command(BaseCommand):
    help = "Create the demo customers, their API keys and tickets, and the admin/staff/operator accounts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--password", help="Password for the admin, staff and operator accounts.")

    @transaction.atomic
    def handle(self, *args: object, password: str | None = None, **options: object) -> None:
        for username, (raw_key, tickets) in CUSTOMERS.items():
            customer, _ = User.objects.get_or_create(username=username)
            if not ApiKey.objects.filter(customer=customer, digest=apikey_digest(raw_key)).exists():
                apikey_issue(customer=customer, raw_key=raw_key)
            for public_id, status, issue in tickets:
                Ticket.objects.get_or_create(
                    public_id=public_id, defaults={"customer": customer, "status": status, "issue": issue}
                )
        self.stdout.write("Customers: john_doe (API key 'key'), jane_roe (API key 'jane-key').")
        roles_ensure()
        for username, (is_superuser, group_name) in STAFF.items():
            self._staff_account(username, is_superuser, group_name, password)

    def _staff_account(self, username: str, is_superuser: bool, group_name: str | None, password: str | None) -> None:
        user, created = User.objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": is_superuser}
        )
        if group_name:
            group, _ = Group.objects.get_or_create(name=group_name)
            user.groups.add(group)
        if password or created:
            chosen = password or secrets.token_urlsafe(12)
            user.set_password(chosen)
            user.save()
            shown = "(the --password given)" if password else chosen
            self.stdout.write(f"Staff account {username!r}: password {shown}")
        else:
            self.stdout.write(
                f"Staff account {username!r} exists; its password is unchanged "
                f"(python manage.py changepassword {username})."
            )
