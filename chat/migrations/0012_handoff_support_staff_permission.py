"""Support staff take conversations over from the assistant (``chat.handle_handoff``, the inbox).

Adds the permission to the existing group (a frozen copy, as in 0003 and 0008; chat.operators.access
holds the set). Operators do not get it: they review, they never speak to customers.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Support staff"
CODENAME = "handle_handoff"


def grant(apps, schema_editor):
    chat = apps.get_app_config("chat")
    chat.models_module = True
    create_permissions(chat, apps=apps, verbosity=0)
    chat.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(*Permission.objects.filter(content_type__app_label="chat", codename=CODENAME))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.filter(name=GROUP):
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="chat", codename=CODENAME))


class Migration(migrations.Migration):
    dependencies = [("chat", "0011_handoff_holder")]

    operations = [migrations.RunPython(grant, revoke)]
