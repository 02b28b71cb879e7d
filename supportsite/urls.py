from django.contrib import admin
from django.urls import include, path

from chat import feedback, views

admin.site.site_header = "Support desk"
admin.site.site_title = "Support desk"
admin.site.index_title = "Customers, tickets and conversations"

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("admin/", admin.site.urls),
    path("favicon.ico", views.favicon),
    path("operators/", include("chat.review_urls")),
    path("feedback/", feedback.feedback_submit, name="feedback"),
]
