from django.urls import path

from chat.operators import inbox, views

app_name = "operators"

urlpatterns = [
    path("", views.conversation_list, name="conversations"),
    path("conversations/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("export.jsonl", views.export_jsonl, name="export-jsonl"),
    path("export.csv", views.export_csv, name="export-csv"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("inbox/", inbox.inbox, name="inbox"),
    path("inbox/<uuid:conversation_id>/", inbox.inbox_conversation, name="inbox-conversation"),
    path("inbox/<uuid:conversation_id>/claim/", inbox.inbox_claim, name="inbox-claim"),
    path("inbox/<uuid:conversation_id>/reply/", inbox.inbox_reply, name="inbox-reply"),
    path("inbox/<uuid:conversation_id>/return/", inbox.inbox_return, name="inbox-return"),
    path("inbox/<uuid:conversation_id>/close/", inbox.inbox_close, name="inbox-close"),
]
