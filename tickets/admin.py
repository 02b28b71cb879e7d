"""Staff manage customers, their API keys and tickets here. Declarative; the writes live in services."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from chat.review import conversations_that_looked_up
from tickets.models import ApiKey, Customer, Ticket, VerificationAttempt
from tickets.services import apikey_rotate


@admin.register(Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ("public_id", "issue", "customer", "status", "updated_at")
    list_filter = ("status",)
    search_fields = ("public_id", "issue", "customer__username")
    list_select_related = ("customer",)
    autocomplete_fields = ("customer",)
    readonly_fields = ("created_at", "updated_at", "looked_up_in")
    fields = ("public_id", "customer", "status", "issue", "description", "created_at", "updated_at", "looked_up_in")

    @admin.display(description="looked up in conversations")
    def looked_up_in(self, ticket: Ticket) -> str:
        if ticket.pk is None:
            return "—"
        conversations = conversations_that_looked_up(ticket=ticket)[:50]
        links = format_html_join(
            "",
            '<li><a href="{}">{}</a> (<a href="{}">admin record</a>)</li>',
            (
                (reverse("operators:conversation", args=[c.id]), f"{c.created_at:%Y-%m-%d %H:%M} UTC",
                 reverse("admin:chat_conversation_change", args=[c.id]))
                for c in conversations
            ),
        )
        return format_html('<ul class="looked-up-in">{}</ul>', links) if links else "Not looked up by the agent yet."


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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
