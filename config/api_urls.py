"""The management API (/api/v1): one router over the viewsets of the apps that offer them.

Here, outside the apps, because journeys imports none of the other apps."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularJSONAPIView
from rest_framework.routers import SimpleRouter

from channels_app.api.reads import ChannelViewSet, DeliveryViewSet, TemplateViewSet
from channels_app.api.views import MessageViewSet
from experiments.api.views import ExperimentViewSet
from journeys.api.base import not_found_view
from journeys.api.management import CustomerViewSet, JobViewSet, WorkflowViewSet


class Router(SimpleRouter):
    """Paths answer with or without a trailing slash (/api/v1/customers and /api/v1/customers/)."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = Router()
router.register("customers", CustomerViewSet, basename="api-customer")
router.register("workflows", WorkflowViewSet, basename="api-workflow")
router.register("messages", MessageViewSet, basename="api-message")
router.register("jobs", JobViewSet, basename="api-job")
router.register("channels", ChannelViewSet, basename="api-channel")
router.register("templates", TemplateViewSet, basename="api-template")
router.register("deliveries", DeliveryViewSet, basename="api-delivery")
router.register("experiments", ExperimentViewSet, basename="api-experiment")

urlpatterns = [
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="api-v1-openapi"),
    *router.urls,
    re_path(r"^[\s\S]*$", not_found_view),
]
