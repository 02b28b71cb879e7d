"""The flood limits' own tables (``chat.counters``), used when there is no Redis.

Raw SQL on purpose: no model, no ORM on the hot path; one upsert per counted event. Made on every
database, so switching a deployment from Redis to the database needs nothing more than ``migrate``.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("chat", "0006_conversation_secret_digests")]

    operations = [
        migrations.RunSQL(
            sql=[
                "CREATE TABLE chat_window_counter ("
                " name varchar(320) NOT NULL PRIMARY KEY, window_id bigint NOT NULL, count integer NOT NULL)",
                "CREATE TABLE chat_socket_lease ("
                " scope varchar(320) NOT NULL, socket varchar(64) NOT NULL, expires_at double precision NOT NULL,"
                " PRIMARY KEY (scope, socket))",
                "CREATE INDEX chat_socket_lease_socket ON chat_socket_lease (socket)",
                "CREATE INDEX chat_socket_lease_expires_at ON chat_socket_lease (expires_at)",
            ],
            reverse_sql=["DROP TABLE chat_socket_lease", "DROP TABLE chat_window_counter"],
        ),
    ]
