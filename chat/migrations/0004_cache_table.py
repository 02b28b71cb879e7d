"""The database cache's table (the flood limits' counters when there is no Redis), made by ``migrate``.

``createcachetable`` makes the tables of the configured database caches and skips any that exist, so
this does nothing when the cache is Redis; run it again after switching a deployment to the database
cache.
"""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_staff_roles")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop, elidable=True)]
