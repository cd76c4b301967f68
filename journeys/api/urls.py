from django.urls import path
from drf_spectacular.views import SpectacularJSONAPIView

from journeys.api import views

urlpatterns = [
    # Generated from the code (drf-spectacular): tracking and management API together.
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="api-openapi"),
    path("batch", views.BatchView.as_view(), name="api-batch"),
    path("import", views.BatchView.as_view(), name="api-import"),
    *[
        path(kind, views.SingleEventView.as_view(event_type=kind), name=f"api-{kind}")
        for kind in ("track", "identify", "page", "screen", "group", "alias")
    ],
    # Segment's analytics.js in browsers: its settings, its one-letter paths and its batch path.
    path("projects/<str:write_key>/settings", views.BrowserSettingsView.as_view(), name="api-browser-settings"),
    # RudderStack's JavaScript SDK: its source configuration (configUrl = this server's /v1).
    path("sourceConfig/", views.RudderSourceConfigView.as_view(), name="api-rudder-source-config"),
    path("sourceConfig", views.RudderSourceConfigView.as_view()),  # a configUrl ending in /sourceConfig
    *[
        path(short, views.ShortSingleEventView.as_view(event_type=kind), name=f"api-{short}")
        for short, kind in views.BROWSER_SHORT_PATHS.items()
    ],
    path("b", views.ShortBatchView.as_view(), name="api-b"),
]
