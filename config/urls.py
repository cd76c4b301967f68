from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("v1/", include("journeys.api.urls")),
    path("api/v1/", include("config.api_urls")),
    path("channels/", include("channels_app.urls")),
    path("agents/", include("agents.urls")),
    path("console/", include("journeys.console.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "journeys.api.base.bad_request_view"

