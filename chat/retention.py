"""How long transcripts are kept: ``python manage.py purge_transcripts`` deletes the older ones."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from chat.models import Conversation


@transaction.atomic
def conversations_purge(*, updated_before: datetime) -> int:
    """Delete conversations (their turns and feedback with them) untouched since ``updated_before``."""
    _, deleted = Conversation.objects.filter(updated_at__lt=updated_before).delete()
    return deleted.get(Conversation._meta.label, 0)
