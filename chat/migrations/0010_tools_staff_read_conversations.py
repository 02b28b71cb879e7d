"""Support staff read conversations with their turns in admin, and read and answer ticket comments;
operators read ticket comments. A frozen copy, as in 0003 and 0008 (chat.operators.access holds the sets).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GRANTS = {
    "Support staff": [
        ("chat", "view_turn"),
        ("tickets", "view_ticketcomment"),
        ("tickets", "add_ticketcomment"),
    ],
    "Operators": [("tickets", "view_ticketcomment")],
}


def _permissions(apps, pairs):
    Permission = apps.get_model("auth", "Permission")
    return [Permission.objects.get(content_type__app_label=app, codename=codename) for app, codename in pairs]


def grant(apps, schema_editor):
    for label in ("chat", "tickets"):
        app_config = apps.get_app_config(label)
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    for name, pairs in GRANTS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*_permissions(apps, pairs))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name, pairs in GRANTS.items():
        for group in Group.objects.filter(name=name):
            group.permissions.remove(*_permissions(apps, pairs))


class Migration(migrations.Migration):
    dependencies = [("chat", "0009_tools_confirmations"), ("tickets", "0003_tools_ticket_comments")]

    operations = [migrations.RunPython(grant, revoke)]
