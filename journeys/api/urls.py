from django.urls import path

from journeys.api import views

urlpatterns = [
    path("openapi.json", views.openapi_view, name="api-openapi"),
    path("batch", views.BatchView.as_view(), name="api-batch"),
    path("import", views.BatchView.as_view(), name="api-import"),
    *[
        path(kind, views.SingleEventView.as_view(event_type=kind), name=f"api-{kind}")
        for kind in ("track", "identify", "page", "screen", "group", "alias")
    ],
]
