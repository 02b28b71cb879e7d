from django.urls import path

from chat.evaluation import views

app_name = "evaluations"

urlpatterns = [
    path("", views.evaluation_list, name="list"),
    path("results/<int:result_id>/", views.scenario_result, name="result"),
]
