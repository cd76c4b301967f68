from django.contrib import admin
from django.urls import include, path

from journeys.api.views import BeaconBatchView

urlpatterns = [
    path("v1/", include("journeys.api.urls")),
    # RudderStack's JavaScript SDK with useBeacon posts here (dataPlaneUrl = this server).
    path("beacon/v1/batch", BeaconBatchView.as_view(), name="api-beacon-batch"),
    path("api/v1/", include("config.api_urls")),
    path("channels/", include("channels_app.urls")),
    path("agents/", include("agents.urls")),
    path("console/", include("journeys.console.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "journeys.api.base.bad_request_view"

