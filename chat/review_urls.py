from django.urls import path

from chat import review_views

app_name = "operators"

urlpatterns = [
    path("", review_views.conversation_list, name="conversations"),
    path("conversations/<uuid:conversation_id>/", review_views.conversation_detail, name="conversation"),
    path("export.jsonl", review_views.export_jsonl, name="export-jsonl"),
    path("export.csv", review_views.export_csv, name="export-csv"),
    path("dashboard/", review_views.dashboard, name="dashboard"),
]
