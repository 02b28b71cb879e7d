"""The "Support staff" and "Operators" groups with exactly their permissions.

A frozen copy of chat.roles.ROLE_PERMISSIONS: a migration must not change when that module does.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "Support staff": [
        *(f"tickets.{action}_{model}" for action in ("view", "add", "change", "delete")
          for model in ("ticket", "apikey", "customer")),
        "auth.view_user",
        "chat.view_conversation",
    ],
    "Operators": [
        "chat.view_conversation",
        "chat.view_turn",
        "chat.view_feedback",
        "chat.review_conversation",
        "tickets.view_ticket",
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally made after all migrations (post_migrate); these groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, dotted_names in ROLES.items():
        permissions = []
        for dotted in dotted_names:
            app_label, codename = dotted.split(".")
            permissions.append(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(permissions)


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("tickets", "0001_initial"),
        ("chat", "0002_feedback_review_permission"),
    ]

    operations = [
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
