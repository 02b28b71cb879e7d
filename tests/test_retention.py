"""Retention: purge_transcripts deletes conversations idle too long; a deleted customer takes theirs along."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from chat.models import Conversation, Feedback, Turn
from chat.services import conversation_start, conversation_verify, turns_append
from tickets.models import Customer

pytestmark = pytest.mark.django_db


def aged(days: float, session: str) -> Conversation:
    conversation = conversation_start(session_key=session * 32)
    turns_append(conversation_id=conversation.id, messages=[{"role": "user", "content": "hello"}])
    Feedback.objects.create(conversation=conversation, rating="up")
    Conversation.objects.filter(id=conversation.id).update(updated_at=timezone.now() - timedelta(days=days))
    return conversation


def purge(*args: str) -> str:
    out = io.StringIO()
    call_command("purge_transcripts", *args, stdout=out)
    return out.getvalue()


def test_purge_deletes_only_older_conversations_with_their_turns_and_feedback():
    old, recent = aged(40, "a"), aged(5, "b")
    assert purge("--older-than", "30").startswith("Deleted 1 conversation(s)")
    assert list(Conversation.objects.values_list("id", flat=True)) == [recent.id]
    assert not Turn.objects.filter(conversation_id=old.id).exists()
    assert not Feedback.objects.filter(conversation_id=old.id).exists()
    assert Turn.objects.filter(conversation_id=recent.id).count() == 2


def test_purge_counts_by_last_activity_not_start():
    started_long_ago = aged(1, "c")
    Conversation.objects.filter(id=started_long_ago.id).update(created_at=timezone.now() - timedelta(days=400))
    assert purge("--older-than", "30").startswith("Deleted 0 conversation(s)")
    assert Conversation.objects.filter(id=started_long_ago.id).exists()


def test_dry_run_deletes_nothing():
    aged(40, "d")
    assert purge("--older-than", "30", "--dry-run").startswith("1 conversation(s)")
    assert Conversation.objects.count() == 1


def test_the_setting_is_the_default(settings):
    aged(40, "e"), aged(10, "f")
    settings.TRANSCRIPT_RETENTION_DAYS = 20
    assert purge().startswith("Deleted 1 conversation(s)")
    assert Conversation.objects.count() == 1
    assert purge("--older-than", "5").startswith("Deleted 1 conversation(s)")  # the option wins


def test_without_option_or_setting_nothing_is_deleted(settings):
    aged(4000, "g")
    if hasattr(settings, "TRANSCRIPT_RETENTION_DAYS"):
        del settings.TRANSCRIPT_RETENTION_DAYS
    with pytest.raises(CommandError, match="TRANSCRIPT_RETENTION_DAYS"):
        purge()
    with pytest.raises(CommandError, match="negative"):
        purge("--older-than", "-1")
    assert Conversation.objects.count() == 1


def test_deleting_a_customer_deletes_their_conversations(demo_data):
    john = User.objects.get(username="john_doe")
    theirs, anonymous = aged(0, "h"), aged(0, "i")
    conversation_verify(conversation_id=theirs.id, customer_id=john.id)
    Customer.objects.get(pk=john.pk).delete()
    assert not Conversation.objects.filter(id=theirs.id).exists()
    assert not Turn.objects.filter(conversation_id=theirs.id).exists()
    assert Conversation.objects.filter(id=anonymous.id).exists()
