"""Staff manage customers, their API keys and tickets here. Declarative; the writes live in services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from chat.operators.access import may_review
from chat.operators.selectors import conversations_about_ticket
from tickets.models import ApiKey, Customer, Ticket, TicketComment, VerificationAttempt
from tickets.services import apikey_rotate, ticket_staff_reply, verification_lockout_clear


class TicketCommentInline(admin.TabularInline):
    """The ticket's conversation with the customer, read-only: their comments and staff's replies and notes."""

    model = TicketComment
    extra = 0
    can_delete = False
    fields = ("created_at", "author", "staff_user", "public", "text")
    readonly_fields = fields
    verbose_name = "comment"
    verbose_name_plural = "comments (the customer's through the chat, staff replies and internal notes)"

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class StaffReplyInline(admin.StackedInline):
    """Answer the customer here: a public reply is what ``get_ticket_status`` tells them next time."""

    model = TicketComment
    extra = 1
    max_num = 1
    can_delete = False
    fields = ("text", "public")
    verbose_name = "reply"
    verbose_name_plural = "reply to the customer (untick “public” for an internal note)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[TicketComment]:
        return super().get_queryset(request).none()  # only new replies are written here


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ("public_id", "issue", "customer", "status", "updated_at")
    list_filter = ("status",)
    search_fields = ("public_id", "issue", "customer__username")
    list_select_related = ("customer",)
    autocomplete_fields = ("customer",)
    inlines = (TicketCommentInline, StaffReplyInline)
    fields = ("public_id", "customer", "status", "issue", "description", "created_at", "updated_at")

    def get_fields(self, request: HttpRequest, obj: Ticket | None = None) -> list[str]:
        # Operators also get the review timeline's link; support staff the admin page they may open.
        return [*self.fields, "conversations_reviewed" if may_review(request.user) else "conversations"]

    def get_readonly_fields(self, request: HttpRequest, obj: Ticket | None = None) -> list[str]:
        return ["created_at", "updated_at", "conversations", "conversations_reviewed"]

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not TicketComment:
            super().save_formset(request, form, formset, change)
            return
        # Only StaffReplyInline adds rows: each is written as the staff member's reply (the admin's history
        # message reads formset.new_objects).
        formset.new_objects = [
            ticket_staff_reply(ticket=form.instance, staff_user=request.user, text=reply.text, public=reply.public)
            for reply in formset.save(commit=False)
        ]

    @admin.display(description="conversations (created, commented on or looked up this ticket)")
    def conversations(self, ticket: Ticket) -> str:
        return self._conversation_links(ticket, timeline=False)

    @admin.display(description="conversations (created, commented on or looked up this ticket)")
    def conversations_reviewed(self, ticket: Ticket) -> str:
        return self._conversation_links(ticket, timeline=True)

    def _conversation_links(self, ticket: Ticket, *, timeline: bool) -> str:
        if ticket.pk is None:
            return "—"
        rows = [
            (reverse("admin:chat_conversation_change", args=[c.id]), f"{c.created_at:%Y-%m-%d %H:%M} UTC",
             ", ".join(what), reverse("operators:conversation", args=[c.id]) if timeline else "")
            for c, what in conversations_about_ticket(ticket=ticket)
        ]
        if not rows:
            return "Not in any conversation with the agent yet."
        template = '<li><a href="{}">{}</a> ({})' + (' — <a href="{}">review timeline</a></li>' if timeline
                                                      else '{}</li>')
        return format_html('<ul class="looked-up-in">{}</ul>', format_html_join("", template, rows))


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # keys are issued with the "Issue a new API key" action, which shows them once


class TicketInline(admin.TabularInline):
    model = Ticket
    extra = 0
    fields = ("public_id", "status", "issue", "updated_at")
    readonly_fields = ("updated_at",)
    show_change_link = True


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("username", "email", "is_active", "active_keys", "ticket_count", "date_joined")
    list_filter = ("is_active",)
    search_fields = ("username", "email", "first_name", "last_name")
    fields = ("username", "first_name", "last_name", "email", "is_active")
    inlines = (ApiKeyInline, TicketInline)
    actions = ("issue_api_key",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Customer]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                _active_keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True),
                _tickets=Count("tickets", distinct=True),
            )
        )

    @admin.display(description="active API keys", ordering="_active_keys")
    def active_keys(self, customer: Customer) -> int:
        return customer._active_keys

    @admin.display(description="tickets", ordering="_tickets")
    def ticket_count(self, customer: Customer) -> int:
        return customer._tickets

    def save_model(self, request: HttpRequest, obj: Customer, form: object, change: bool) -> None:
        if not change:
            obj.set_unusable_password()  # customers prove who they are with API keys, never a password
        obj.is_staff = obj.is_superuser = False
        super().save_model(request, obj, form, change)

    @admin.action(description="Issue a new API key (revokes the current ones)", permissions=["change"])
    def issue_api_key(self, request: HttpRequest, queryset: QuerySet[Customer]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Choose exactly one customer to issue a key for.", messages.WARNING)
            return None
        customer = queryset.get()
        _, raw_key = apikey_rotate(customer=User.objects.get(pk=customer.pk))
        response = TemplateResponse(
            request,
            "admin/tickets/customer/new_api_key.html",
            {**self.admin_site.each_context(request), "customer": customer, "raw_key": raw_key,
             "opts": self.model._meta, "title": f"New API key for {customer.username}"},
        )
        response["Cache-Control"] = "no-store"
        return response


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "customer", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("customer__username", "prefix")
    list_select_related = ("customer",)
    fields = ("customer", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("customer", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(VerificationAttempt)
class VerificationAttemptAdmin(admin.ModelAdmin):
    list_display = ("created_at", "username", "succeeded", "client_address", "conversation_id")
    list_filter = ("succeeded",)
    search_fields = ("username", "client_address")
    actions = ("clear_lockout",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.action(description="Clear lockout (forget the failures of these usernames from these addresses)",
                  permissions=["delete"])
    def clear_lockout(self, request: HttpRequest, queryset: QuerySet[VerificationAttempt]) -> None:
        pairs = set(queryset.values_list("username", "client_address"))
        deleted = sum(verification_lockout_clear(username=name, client_address=address) for name, address in pairs)
        self.message_user(request, f"Cleared {deleted} failed attempt(s) for {len(pairs)} username/address pair(s).")
