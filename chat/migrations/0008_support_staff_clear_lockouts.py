"""Support staff see verification attempts and may delete them (the admin's "Clear lockout").

Adds the two permissions to the existing group (a frozen copy, as in 0003; chat.operators.access holds the set).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP = "Support staff"
CODENAMES = ["view_verificationattempt", "delete_verificationattempt"]


def grant(apps, schema_editor):
    tickets = apps.get_app_config("tickets")
    tickets.models_module = True
    create_permissions(tickets, apps=apps, verbosity=0)
    tickets.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    group.permissions.add(*Permission.objects.filter(content_type__app_label="tickets", codename__in=CODENAMES))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group in Group.objects.filter(name=GROUP):
        group.permissions.remove(*Permission.objects.filter(content_type__app_label="tickets", codename__in=CODENAMES))


class Migration(migrations.Migration):
    dependencies = [("chat", "0007_flood_counters"), ("tickets", "0002_verification")]

    operations = [migrations.RunPython(grant, revoke)]
