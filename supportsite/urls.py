from django.contrib import admin
from django.urls import include, path

from chat import feedback, health, views, widget

admin.site.site_header = "Support desk"
admin.site.site_title = "Support desk"
admin.site.index_title = "Customers, tickets and conversations"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("admin/", admin.site.urls),
    path("favicon.ico", views.favicon),
    path("operators/evaluations/", include("chat.evaluation.urls")),
    path("operators/", include("chat.operators.urls")),
    path("feedback/", feedback.feedback_submit, name="feedback"),
    path("embed/", widget.chat_embed, name="chat-embed"),
    path("healthz", health.healthz, name="healthz"),
]
