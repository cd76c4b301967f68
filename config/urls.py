from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("v1/", include("journeys.api.urls")),
    path("admin/", admin.site.urls),
]
