"""Writes and checks for customers' API keys and verification attempts."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Exists, Q
from django.utils import timezone

from chat.services import Statement, conversation_verify_statement, rows_insert_statement, statements_run
from tickets.models import ApiKey, Ticket, TicketComment, Verification, VerificationAttempt
from tickets.selectors import ticket_get_for_customer, tickets_created_since, verifications_holding

KEY_PREFIX = "sk_"
# Compared against when the username has no key, so an unknown name costs the same work as a wrong key.
_NO_KEY_DIGEST = "0" * 64


def apikey_digest(raw_key: str) -> str:
    return hmac.new(settings.API_KEY_SECRET.encode(), raw_key.encode(), hashlib.sha256).hexdigest()


_ACTIVE_DIGESTS = "SELECT digest FROM tickets_apikey WHERE customer_id = %s AND revoked_at IS NULL"
# What could be a key in free text: a run of characters without spaces, quotes or brackets.
_KEY_CANDIDATE = re.compile(r"""[^\s"'“”‘’`,;()\[\]{}<>]{1,256}""")


def apikey_finder(customer_id: int) -> Callable[[str], list[str]]:
    """A function giving the words of a text that are one of the customer's active API keys.

    One query now, none per call: each word costs one HMAC (about 2 µs), so a key the customer types
    again after verification, or that a model echoes, is found and can be masked before it is stored.
    """
    with connection.cursor() as cursor:  # written out: every turn of a verified conversation starts with it
        cursor.execute(_ACTIVE_DIGESTS, [customer_id])
        digests = {digest for (digest,) in cursor.fetchall()}

    def find(text: str) -> list[str]:
        if not digests:
            return []
        found: dict[str, None] = {}
        for word in dict.fromkeys(_KEY_CANDIDATE.findall(text)):
            for candidate in (word, word.rstrip(".!?:")):  # the sentence's full stop is not the key's
                if candidate and apikey_digest(candidate) in digests:
                    found[candidate] = None
        return list(found)

    return find


def apikey_visible_prefix(raw_key: str) -> str:
    """Enough of a generated key to tell keys apart; nothing of a short, hand-set one."""
    return raw_key[: len(KEY_PREFIX) + 6] if len(raw_key) >= 24 else ""


@transaction.atomic
def apikey_issue(*, customer: User, raw_key: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``customer``; returns it with the raw key, which is never stored or shown again."""
    raw_key = raw_key or KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        customer=customer, prefix=apikey_visible_prefix(raw_key), digest=apikey_digest(raw_key)
    )
    return key, raw_key


@transaction.atomic
def apikey_rotate(*, customer: User) -> tuple[ApiKey, str]:
    """Revoke every active key of ``customer`` and issue a new one."""
    ApiKey.objects.filter(customer=customer, revoked_at__isnull=True).update(revoked_at=timezone.now())
    return apikey_issue(customer=customer)


def customer_authenticate(*, username: str, raw_key: str) -> User | None:
    """The active customer whose username and API key these are, or None."""
    key = apikey_authenticate(username=username, raw_key=raw_key)
    return key.customer if key is not None else None


def apikey_authenticate(*, username: str, raw_key: str) -> ApiKey | None:
    """The active key of the active customer these are (with its customer), or None. Constant-time compare.
    A key that matches is marked used."""
    match = apikey_match(username=username, raw_key=raw_key)
    if match is not None:
        match.last_used_at = timezone.now()
        ApiKey.objects.filter(id=match.pk).update(last_used_at=match.last_used_at)
    return match


def apikey_match(*, username: str, raw_key: str) -> ApiKey | None:
    """``apikey_authenticate`` without marking the key used (the caller writes that with its own writes)."""
    (candidates,) = statements_run([_keys_of_statement(username)])
    return _key_matching(candidates, raw_key)


def apikey_known(raw_value: str) -> bool:
    """Whether the value is any customer's key, active or revoked (one indexed query)."""
    (((known,),),) = statements_run([_key_known_statement(raw_value)])
    return bool(known)


@dataclass(frozen=True)
class KeyCheck:
    """What ``verify_user`` must know before it writes anything, read in one step."""

    username_is_key: bool  # the username given is itself a key (any customer's, active or revoked)
    locked: bool  # recent failures pause verification for the username (``key_as_username`` when it is a key)
    key: ApiKey | None  # the active key matching ``raw_key`` of the username's customer (never for a key)


def verification_check(
    *, username: str, raw_key: str, key_as_username: str, conversation_id: uuid.UUID, client_address: str | None
) -> KeyCheck:
    """``apikey_known``, ``verification_locked`` and ``apikey_match`` for one ``verify_user`` call, asked
    together: one round trip on PostgreSQL instead of three, and written-out statements instead of three
    querysets the ORM compiles each time. The failures are counted for both names the attempt may be
    recorded under (the username, or ``key_as_username`` when the username is a key); the caller's answer
    is the same as asking the three in turn."""
    known, (counts,), candidates = statements_run([
        _key_known_statement(username),
        _failures_statement([username, key_as_username], conversation_id, client_address),
        _keys_of_statement(username),
    ])
    username_is_key = username == raw_key or bool(known[0][0])
    mine = counts[1] if username_is_key else counts[0]
    return KeyCheck(
        username_is_key=username_is_key,
        locked=_locked(mine, counts[2], client_address),
        key=None if username_is_key else _key_matching(candidates, raw_key),
    )


# VERIFY_USER'S READS, WRITTEN OUT: a verification turn ran three querysets (the ORM built and compiled each
# one, ~5 times the statement's own cost), one after another. As statements they go together.
_KEY_KNOWN = "SELECT EXISTS (SELECT 1 FROM tickets_apikey WHERE digest = %s)"
_KEYS_OF = (  # the active keys of the active customer (never staff) with this username
    "SELECT k.id, k.customer_id, k.digest FROM tickets_apikey k INNER JOIN auth_user u ON u.id = k.customer_id "
    "WHERE u.username = %s AND u.is_active AND NOT u.is_staff AND NOT u.is_superuser AND k.revoked_at IS NULL"
)


def _key_known_statement(raw_value: str) -> Statement:
    return _KEY_KNOWN, [apikey_digest(raw_value)]


def _keys_of_statement(username: str) -> Statement:
    return _KEYS_OF, [username]


def _key_matching(candidates: list[tuple[Any, ...]], raw_key: str) -> ApiKey | None:
    """The candidate (id, customer id, digest) whose digest is the key's, compared in constant time; an
    unknown username is compared against a digest no key has, so it costs the same work as a wrong key."""
    digest = apikey_digest(raw_key)
    match = None
    for row in candidates or [(None, None, _NO_KEY_DIGEST)]:
        if hmac.compare_digest(row[2], digest) and row[0] is not None:
            match = ApiKey.from_db(connection.alias, ["id", "customer_id", "digest"], row)  # the rest deferred
    return match


def _failures_statement(usernames: list[str], conversation_id: object, client_address: str | None) -> Statement:
    """Recent failed attempts: for each username, those from this address or in this conversation (the
    first counts), then all those from this address (the second count)."""
    field = VerificationAttempt._meta.get_field
    since = field("created_at").get_db_prep_value(
        timezone.now() - timedelta(seconds=settings.VERIFY_LOCKOUT_SECONDS), connection
    )
    conversation = field("conversation_id").get_db_prep_value(conversation_id, connection)
    here, at = ("client_address = %s", [client_address]) if client_address else ("client_address IS NULL", [])
    per_name = f"SUM(CASE WHEN (username = %s AND {here}) OR conversation_id = %s THEN 1 ELSE 0 END)"
    sql = (
        f"SELECT {', '.join([per_name] * len(usernames))}, SUM(CASE WHEN {here} THEN 1 ELSE 0 END) "  # noqa: S608
        "FROM tickets_verificationattempt "
        f"WHERE succeeded = %s AND created_at >= %s AND ({here} OR conversation_id = %s)"
    )
    params = [p for username in usernames for p in (username, *at, conversation)]
    return sql, [*params, *at, False, since, *at, conversation]


def _locked(mine: int | None, from_address: int | None, client_address: str | None) -> bool:
    if (mine or 0) >= settings.VERIFY_MAX_FAILURES:
        return True
    return bool(client_address) and (from_address or 0) >= settings.VERIFY_MAX_FAILURES_PER_ADDRESS


def verification_by_key_record(
    *, key: ApiKey, username: str, conversation_id: uuid.UUID, client_address: str | None
) -> None:
    """A successful ``verify_user``, written together (one transaction; one query on PostgreSQL, where each
    write would be a round trip and a commit): the key marked used, the attempt, the verification, and the
    conversation's customer."""
    key.last_used_at = timezone.now()
    used = ApiKey._meta.get_field("last_used_at").get_db_prep_save(key.last_used_at, connection)
    attempt = VerificationAttempt(
        username=username, conversation_id=conversation_id, client_address=client_address, succeeded=True
    )
    verification = Verification(conversation_id=conversation_id, customer_id=key.customer_id, api_key=key)
    statements_run(
        [
            (_KEY_USED, [used, key.pk]),
            rows_insert_statement([attempt]),
            rows_insert_statement([verification]),
            conversation_verify_statement(conversation_id=conversation_id, customer_id=key.customer_id),
        ]
    )


_KEY_USED = "UPDATE tickets_apikey SET last_used_at = %s WHERE id = %s"


def verification_record_signed(*, conversation_id: object, customer_id: int, signer: str) -> None:
    """The conversation is verified as the customer the website signed in, for as long as the customer is
    active and ``signer`` (the signing secret's fingerprint) is current."""
    Verification.objects.create(conversation_id=conversation_id, customer_id=customer_id, signer=signer)


def verification_locked(*, username: str, conversation_id: object, client_address: str | None) -> bool:
    """Whether recent failures pause verification: for this username from this address, in this
    conversation, or from this address at all. Failures from elsewhere never lock a customer out."""
    (((mine, from_address),),) = statements_run([_failures_statement([username], conversation_id, client_address)])
    return _locked(mine, from_address, client_address)


@transaction.atomic
def verification_lockout_clear(*, username: str, client_address: str | None) -> int:
    """Forget the failed attempts of ``username`` from ``client_address``; the number deleted."""
    from_there = Q(client_address=client_address) if client_address else Q(client_address__isnull=True)
    deleted, _ = VerificationAttempt.objects.filter(from_there, username=username, succeeded=False).delete()
    return deleted


def verification_attempt_record(
    *, username: str, conversation_id: object, client_address: str | None, succeeded: bool
) -> None:
    VerificationAttempt.objects.create(
        username=username, conversation_id=conversation_id, client_address=client_address, succeeded=succeeded
    )


# TICKETS AND COMMENTS WRITTEN THROUGH THE CHAT


class TicketLimitReached(Exception):
    """The customer opened ``TICKETS_CREATED_PER_DAY`` tickets through the chat in the last 24 hours."""


def ticket_public_id_new() -> str:
    """A fresh 6-digit ticket id: random, so ids say nothing about how many tickets there are."""
    while True:
        candidate = str(100000 + secrets.randbelow(900000))
        if not Ticket.objects.filter(public_id=candidate).exists():
            return candidate


@transaction.atomic
def ticket_create_for_customer(
    *, customer_id: int, conversation_id: object, issue: str, description: str
) -> Ticket | None:
    """A new Open ticket of the customer, linked to the conversation; None unless the conversation's
    verification as them holds. The customer's row is locked, so two conversations at once cannot both
    pass the daily limit (``TicketLimitReached``)."""
    holding = verifications_holding(conversation_id=conversation_id).filter(customer_id=customer_id)
    if not User.objects.select_for_update().filter(Exists(holding), pk=customer_id).exists():
        return None
    since = timezone.now() - timedelta(days=1)
    if tickets_created_since(customer_id=customer_id, since=since) >= settings.TICKETS_CREATED_PER_DAY:
        raise TicketLimitReached
    return Ticket.objects.create(
        public_id=ticket_public_id_new(),
        customer_id=customer_id,
        issue=issue,
        description=description,
        conversation_id=conversation_id,
    )


@transaction.atomic
def ticket_comment_add_for_customer(
    *, public_id: str, customer_id: int, conversation_id: object, text: str
) -> TicketComment | None:
    """The customer's public comment on their own ticket; None when the ticket is not theirs (or does not
    exist) or the verification no longer holds: the caller tells those apart by ``ticket_get_for_customer``."""
    ticket = ticket_get_for_customer(public_id=public_id, customer_id=customer_id, conversation_id=conversation_id)
    if ticket is None or not ticket.holds:
        return None
    comment = TicketComment.objects.create(
        ticket=ticket, author=TicketComment.Author.CUSTOMER, text=text, conversation_id=conversation_id
    )
    Ticket.objects.filter(pk=ticket.pk).update(updated_at=timezone.now())
    return comment


def ticket_staff_reply(*, ticket: Ticket, staff_user: User, text: str, public: bool = True) -> TicketComment:
    """Staff's answer on the ticket (``public``) or an internal note."""
    comment = TicketComment.objects.create(
        ticket=ticket, author=TicketComment.Author.STAFF, staff_user=staff_user, text=text, public=public
    )
    Ticket.objects.filter(pk=ticket.pk).update(updated_at=timezone.now())
    return comment
