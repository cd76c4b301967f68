"""The operations console, mounted at /console/ (staff only, through the admin's login)."""

from django.contrib import admin
from django.urls import path

from journeys.console import views

app_name = "console"

urlpatterns = [
    path("", admin.site.admin_view(views.dashboard), name="dashboard"),
    path("dashboard.json", admin.site.admin_view(views.dashboard_data), name="dashboard_data"),
    path("versions/<int:pk>/graph/", admin.site.admin_view(views.version_graph_view), name="version_graph"),
    path("rules/check.json", admin.site.admin_view(views.rule_check), name="rule_check"),
    path("templates/preview.json", admin.site.admin_view(views.template_preview_view),
         name="template_preview"),
    path("jobs/<int:pk>.json", admin.site.admin_view(views.job_status_view), name="job_status"),
    path("jobs/<int:pk>/download/", admin.site.admin_view(views.job_download), name="job_download"),
]
