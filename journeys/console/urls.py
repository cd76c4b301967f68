"""The operations console, mounted at /console/ (staff only, through the admin's login)."""

from django.contrib import admin
from django.urls import path

from journeys.console import canvas, views

app_name = "console"

urlpatterns = [
    path("", admin.site.admin_view(views.dashboard), name="dashboard"),
    path("dashboard.json", admin.site.admin_view(views.dashboard_data), name="dashboard_data"),
    path("versions/<int:pk>/graph/", admin.site.admin_view(views.version_graph_view), name="version_graph"),
    path("versions/<int:pk>/canvas/", admin.site.admin_view(canvas.canvas_command), name="canvas_command"),
    path("versions/<int:pk>/canvas/steps/<int:step_pk>/", admin.site.admin_view(canvas.canvas_step),
         name="canvas_step"),
    path("versions/<int:pk>/canvas/settings/", admin.site.admin_view(canvas.canvas_settings), name="canvas_settings"),
    path("versions/<int:pk>/new-draft/", admin.site.admin_view(canvas.version_draft_from), name="version_new_draft"),
    path("rules/check.json", admin.site.admin_view(views.rule_check), name="rule_check"),
    path("templates/preview.json", admin.site.admin_view(views.template_preview_view),
         name="template_preview"),
    path("jobs/<int:pk>.json", admin.site.admin_view(views.job_status_view), name="job_status"),
    path("jobs/<int:pk>/download/", admin.site.admin_view(views.job_download), name="job_download"),
]
