from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect
from django.templatetags.static import static
from django.urls import include, path

from config.metrics import metrics_view
from journeys.api.views import BeaconBatchView



def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """The icon browsers ask for on pages that name none (the API's, the preference centre):
    the console's, rather than a 404 in every browser console. Not permanent: its static name
    changes with its content."""
    return HttpResponseRedirect(static("console/favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
    # Prometheus text for monitoring (config.metrics); /healthz and /readyz: config.health (a middleware)
    path("metrics", metrics_view, name="metrics"),
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

