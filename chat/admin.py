"""Conversations in admin: read-only, their turns in order. Operators review them at /operators/."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from chat.models import Conversation, Turn


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    can_delete = False
    ordering = ("seq",)
    fields = (
        "seq", "role", "content", "tool_calls", "tool_call_id", "model", "latency_ms", "error_code", "created_at"
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "created_at", "customer", "turn_count", "updated_at")
    list_filter = ("created_at",)
    search_fields = ("id", "customer__username", "turns__content")
    list_select_related = ("customer",)
    fields = ("id", "customer", "client_address", "created_at", "updated_at")
    readonly_fields = fields
    inlines = (TurnInline,)
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return super().get_queryset(request).annotate(_turns=Count("turns"))

    @admin.display(description="turns", ordering="_turns")
    def turn_count(self, conversation: Conversation) -> int:
        return conversation._turns

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
