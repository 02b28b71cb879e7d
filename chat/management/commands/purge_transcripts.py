"""``python manage.py purge_transcripts [--older-than DAYS]``: delete conversations idle that long.

Without ``--older-than`` the ``TRANSCRIPT_RETENTION_DAYS`` setting decides; with neither, nothing is
deleted. Run it daily (cron, a systemd timer) to keep transcripts no longer than promised. It also
clears expired browser sessions and the flood limits' finished counters (as ``clearsessions`` would).
"""

from __future__ import annotations

from datetime import timedelta
from importlib import import_module
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from chat.limits import counters_purge
from chat.models import Conversation
from chat.retention import conversations_purge


class Command(BaseCommand):
    help = "Delete conversations whose last activity is older than DAYS days (default: TRANSCRIPT_RETENTION_DAYS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, metavar="DAYS", help="Age in days of the last activity.")
        parser.add_argument("--dry-run", action="store_true", help="Only say how many would be deleted.")

    def handle(self, *args: Any, older_than: int | None = None, dry_run: bool = False, **options: Any) -> None:
        days = older_than if older_than is not None else getattr(settings, "TRANSCRIPT_RETENTION_DAYS", None)
        if days is None:
            raise CommandError("Give --older-than DAYS or set TRANSCRIPT_RETENTION_DAYS.")
        if int(days) < 0:
            raise CommandError("DAYS cannot be negative.")
        cutoff = timezone.now() - timedelta(days=int(days))
        before = f"last active before {cutoff:%Y-%m-%d %H:%M} UTC"
        if dry_run:
            count = Conversation.objects.filter(updated_at__lt=cutoff).count()
            self.stdout.write(f"{count} conversation(s) {before} would be deleted.")
            return
        count = conversations_purge(updated_before=cutoff)
        self.stdout.write(f"Deleted {count} conversation(s) {before}.")
        import_module(settings.SESSION_ENGINE).SessionStore.clear_expired()
        self.stdout.write(f"Cleared expired sessions and {counters_purge()} finished flood counter(s).")
