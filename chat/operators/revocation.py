"""When a user's rights change, tell that user's open operator sockets so they check again.

Every operator socket joins its user's channel-layer group (``staff_user_group``). The receivers below
send a ``rights.changed`` event to the group of each user whose review right may have changed: the user
saved or deleted, their groups or direct permissions changed, a group's permissions changed or the
group was deleted. The event goes out after commit, so the socket re-reads what was written; the
channel layer carries it to sockets held by other server processes. The socket decides (``may_review``
again); this module only says who to ask, and may ask too often, never too rarely.

The receivers are connected when ``chat.operators`` is imported (its ``__init__``), which every
process does through the admin's autodiscovery (``tickets.admin``) and the socket routes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver

logger = logging.getLogger(__name__)

RIGHTS_CHANGED = "rights.changed"  # the consumer's ``rights_changed`` handler


def staff_user_group(user_id: int) -> str:
    """The channel-layer group every operator socket of this user joins."""
    return f"staff.user.{user_id}"


def rights_changed_notify(user_ids: Iterable[int]) -> None:
    """After the current transaction commits, ask these users' operator sockets to check again."""
    ids = sorted(set(user_ids))
    if ids:
        transaction.on_commit(lambda: _send(ids), robust=True)


def _send(user_ids: list[int]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for user_id in user_ids:
        async_to_sync(layer.group_send)(staff_user_group(user_id), {"type": RIGHTS_CHANGED})


def _staff_in_groups(group_ids: Iterable[int]) -> list[int]:
    # Only staff can hold an operator socket; someone made non-staff is told through their own save.
    return list(User.objects.filter(groups__in=list(group_ids), is_staff=True).values_list("pk", flat=True).distinct())


def _staff_holding(permission_ids: Iterable[int]) -> list[int]:
    ids = list(permission_ids)
    direct = User.objects.filter(user_permissions__in=ids, is_staff=True).values_list("pk", flat=True)
    via_group = Group.objects.filter(permissions__in=ids).values_list("pk", flat=True)
    return [*direct, *_staff_in_groups(via_group)]


@receiver(post_save, sender=User, dispatch_uid="operators.rights.user_saved")
def _user_saved(sender: type[User], instance: User, update_fields: Any = None, **kwargs: Any) -> None:
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # every login saves this; it changes no right
    rights_changed_notify([instance.pk])


@receiver(post_delete, sender=User, dispatch_uid="operators.rights.user_deleted")
def _user_deleted(sender: type[User], instance: User, **kwargs: Any) -> None:
    rights_changed_notify([instance.pk])


@receiver(pre_delete, sender=Group, dispatch_uid="operators.rights.group_deleted")
def _group_deleted(sender: type[Group], instance: Group, **kwargs: Any) -> None:
    # Before the delete: afterwards nobody is in the group any more to be found.
    rights_changed_notify(_staff_in_groups([instance.pk]))


@receiver(pre_delete, sender=Permission, dispatch_uid="operators.rights.permission_deleted")
def _permission_deleted(sender: type[Permission], instance: Permission, **kwargs: Any) -> None:
    rights_changed_notify(_staff_holding([instance.pk]))


def _m2m_changes_rights(action: str) -> bool:
    # ``clear`` is caught before it happens (pk_set is None then; the rows still say who was affected).
    return action in ("post_add", "post_remove", "pre_clear")


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="operators.rights.user_groups")
def _user_groups_changed(instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any) -> None:
    if not _m2m_changes_rights(action):
        return
    if not reverse:  # user.groups.add/remove/clear(...)
        rights_changed_notify([instance.pk])
    elif pk_set is not None:  # group.user_set.add/remove(...)
        rights_changed_notify(pk_set)
    else:  # group.user_set.clear()
        rights_changed_notify(_staff_in_groups([instance.pk]))


@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="operators.rights.user_permissions")
def _user_permissions_changed(
    instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if not _m2m_changes_rights(action):
        return
    if not reverse:  # user.user_permissions...
        rights_changed_notify([instance.pk])
    elif pk_set is not None:  # permission.user_set.add/remove(...)
        rights_changed_notify(pk_set)
    else:
        rights_changed_notify(User.objects.filter(user_permissions=instance).values_list("pk", flat=True))


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="operators.rights.group_permissions")
def _group_permissions_changed(
    instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kwargs: Any
) -> None:
    if not _m2m_changes_rights(action):
        return
    if not reverse:  # group.permissions...
        rights_changed_notify(_staff_in_groups([instance.pk]))
    elif pk_set is not None:  # permission.group_set.add/remove(...)
        rights_changed_notify(_staff_in_groups(pk_set))
    else:
        rights_changed_notify(_staff_in_groups(Group.objects.filter(permissions=instance).values_list("pk", flat=True)))
