"""Management API views of the journeys core (/api/v1): customers, workflows (read, trigger), jobs.

Thin: an input serializer checks the shape, a service does the work, an output serializer
renders it. Authentication, scopes, throttling and the access log come from `TokenApiView`.
"""

from __future__ import annotations

import uuid

from django.http import StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from journeys.api.base import IdCursorPagination, TokenApiView, id_or_404
from journeys.api.management_serializers import (
    ApiErrorOut,
    CustomerListOut,
    CustomerOut,
    CustomerQuery,
    EraseIn,
    JobOut,
    MergeIn,
    TraitsIn,
    TraitsOut,
    TriggerIn,
    TriggerOut,
    WorkflowListOut,
    WorkflowOut,
)
from journeys.choices import ApiScope
from journeys.models import Customer, Job
from journeys.services import customers_api, workflows_api
from journeys.services.customers_api import CustomerNotFound
from journeys.services.triggers import workflow_trigger

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
    description="repeat a request safely: the same key returns the same job",
)
ERASE_REASON = OpenApiParameter(
    "reason", str, OpenApiParameter.QUERY, required=False,
    description="why the customer is erased (e.g. the request's ticket number), kept on the erasure record; "
                "a JSON body {\"reason\": ...} is read too",
)


def refusal(description: str) -> OpenApiResponse:
    """A documented 4xx: its body is the API's error (`code`, `message`, `field`)."""
    return OpenApiResponse(ApiErrorOut, description=description)


REFUSALS = {
    401: refusal("missing, unknown, revoked or expired token"),
    403: refusal("the token lacks the scope"),
    406: refusal("the Accept header asks for something other than JSON"),
    429: refusal("the token's rate limit; see Retry-After"),
}
PAGE_REFUSAL = refusal("a bad `limit` (not 1 to 500) or `cursor`; `field` names it")
INPUT_REFUSALS = {**REFUSALS, 400: refusal("bad input (a malformed body, a missing or unknown field); `field` names it"),
                  413: refusal("body over 2 MB (also once gzip is inflated)"),
                  415: refusal("a Content-Type other than application/json, or a Content-Encoding other than gzip"),
                  422: refusal("well-formed but cannot be done; `field` names why")}


class PagedList:
    """`list` of a viewset: `get_queryset()` a page at a time by id (IdCursorPagination),
    each row rendered with `list_serializer`."""

    pagination_class = IdCursorPagination
    lookup_value_regex = r"[0-9]+"
    list_serializer: type[serializers.Serializer]

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.list_serializer(page, many=True).data)


class ReadOnlyViewSet(TokenApiView, PagedList, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """A read-only resource: a list paged by id and one row by id (`serializer_class`)."""


def read_schema(*, list_out, list_summary: str, noun: str = "", one_out=None, one_summary: str = "",
                parameters=None, list_refusal: OpenApiResponse = PAGE_REFUSAL):
    """The documented answers of a viewset's list (and, given `one_out`, its read by id)."""
    views = {"list": extend_schema(parameters=parameters, summary=list_summary,
                                   responses={200: list_out(many=True), 400: list_refusal, **REFUSALS})}
    if one_out is not None:
        views["retrieve"] = extend_schema(summary=one_summary,
                                          responses={200: one_out, 404: refusal(f"no such {noun}"), **REFUSALS})
    return extend_schema_view(**views)


def _customer(pk) -> Customer:
    try:
        return customers_api.customer_get(pk=id_or_404(pk))
    except CustomerNotFound:
        raise NotFound(f"no customer with id {pk}") from None


def _job_body(job: Job, replayed: bool) -> dict:
    return {"job": JobOut(job).data, "replayed": replayed}


@read_schema(list_out=CustomerListOut, parameters=[CustomerQuery],
             list_summary="List or look up customers (by user id, email, phone or anonymous id)",
             list_refusal=refusal("a bad `limit` (not 1 to 500), `cursor` or filter; `field` names it"))
class CustomerViewSet(TokenApiView, PagedList, viewsets.GenericViewSet):
    """Customer profiles: look up, read, set traits, merge, erase, export."""

    scopes = {"list": ApiScope.CUSTOMERS_READ, "retrieve": ApiScope.CUSTOMERS_READ,
              "traits": ApiScope.CUSTOMERS_WRITE, "merge": ApiScope.CUSTOMERS_WRITE,
              "destroy": ApiScope.CUSTOMERS_WRITE, "export": ApiScope.EXPORT}
    serializer_class = CustomerOut
    list_serializer = CustomerListOut

    def get_queryset(self):
        query = CustomerQuery(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return customers_api.customers_lookup(**query.validated_data)

    @extend_schema(responses={200: CustomerOut, 404: refusal("no such customer"), **REFUSALS},
                   summary="A customer's profile: identities, consents, stage, traits")
    def retrieve(self, request, pk=None):
        return Response(CustomerOut(customers_api.customer_profile(customer=_customer(pk))).data)

    @extend_schema(request=TraitsIn, responses={200: TraitsOut, 404: refusal("no such customer"),
                                                **INPUT_REFUSALS},
                   summary="Set traits (as an identify call: attribute-change triggers fire)")
    @action(detail=True, methods=["patch"])
    def traits(self, request, pk=None):
        customer = customers_api.customer_writable(customer=_customer(pk))
        body = TraitsIn(data=request.data, context={"stored_traits": customer.traits})
        body.is_valid(raise_exception=True)
        changes = customers_api.customer_traits_set(customer=customer, traits=body.validated_data["traits"],
                                                    actor=request.auth.actor)
        return Response(TraitsOut({"changes": changes, "customer": customers_api.customer_profile(customer=customer)}).data)

    @extend_schema(request=MergeIn, responses={200: CustomerOut, 404: refusal("no such customer"),
                                               **INPUT_REFUSALS},
                   summary="Merge another customer into this one (identities, events, runs move)")
    @action(detail=True, methods=["post"])
    def merge(self, request, pk=None):
        target = customers_api.customer_writable(customer=_customer(pk))
        body = MergeIn(data=request.data)
        body.is_valid(raise_exception=True)
        merged = Customer.objects.filter(pk=body.validated_data["merge"]).first()
        if merged is None:
            raise serializers.ValidationError({"merge": f"no customer with id {body.validated_data['merge']}"})
        customers_api.customer_writable(customer=merged, field="merge")
        customers_api.customers_merge(target=target, merged=merged, actor=request.auth.actor,
                                      reason=body.validated_data.get("reason", ""))
        target.refresh_from_db()
        return Response(CustomerOut(customers_api.customer_profile(customer=target)).data)

    @extend_schema(parameters=[IDEMPOTENCY_HEADER, ERASE_REASON],
                   responses={202: TriggerOut, 404: refusal("no such customer"), **INPUT_REFUSALS},
                   summary="Erase a customer (as manage.py erase_customer), in the background; poll the job")
    def destroy(self, request, pk=None):
        customer = _customer(pk)
        # The reason comes as ?reason= (generated clients send no body with DELETE) or in a JSON
        # body {"reason": ...} (as before); both at once must agree.
        body = EraseIn(data=request.data)
        body.is_valid(raise_exception=True)
        reason = body.validated_data.get("reason")
        if "reason" in request.query_params:
            query = EraseIn(data={"reason": request.query_params["reason"]})
            query.is_valid(raise_exception=True)
            if reason is not None and reason != query.validated_data["reason"]:
                raise serializers.ValidationError({"reason": "given twice (query and body) with different values"})
            reason = query.validated_data["reason"]
        key = request.headers.get("Idempotency-Key") or f"customer:{customer.pk}"
        job, created = customers_api.customer_erase_request(customer=customer, token=request.auth, key=key[:200],
                                                            reason=reason or "")
        return Response(_job_body(job, not created), status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, parameters=[IDEMPOTENCY_HEADER],
                   responses={202: TriggerOut, 404: refusal("no such customer"),
                              422: refusal("the Idempotency-Key was used for another request"), **REFUSALS},
                   summary="Export everything held about a customer, in the background (kept 24 h)")
    @action(detail=True, methods=["post"])
    def export(self, request, pk=None):
        customer = _customer(pk)
        key = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        job, created = customers_api.customer_export_request(customer=customer, token=request.auth, key=key[:200])
        return Response(_job_body(job, not created), status=status.HTTP_202_ACCEPTED)


@read_schema(list_out=WorkflowListOut, list_summary="List workflows: id, name, status, live version and its "
                                                     "trigger (by id, pages)",
             noun="workflow", one_out=WorkflowOut, one_summary="A workflow and its versions (number, state, "
                                                               "published_at)")
class WorkflowViewSet(ReadOnlyViewSet):
    """Workflows: list and read them (ids, names, live version, trigger); trigger a live one for
    customers or a segment."""

    scopes = {"list": ApiScope.WORKFLOWS_READ, "retrieve": ApiScope.WORKFLOWS_READ, "trigger": ApiScope.TRIGGER}
    serializer_class = WorkflowOut
    list_serializer = WorkflowListOut

    def get_queryset(self):
        return workflows_api.workflows_list(with_versions=self.action == "retrieve")

    @extend_schema(request=TriggerIn, responses={200: TriggerOut, 202: TriggerOut,
                                                 404: refusal("no such workflow"),
                                                 **INPUT_REFUSALS},
                   summary="Enrol customers (or a segment) in the workflow's live version, idempotently")
    @action(detail=True, methods=["post"])
    def trigger(self, request, pk=None):
        workflow = self.get_object()
        body = TriggerIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        job, created = workflow_trigger(workflow=workflow, token=request.auth, key=data["idempotency_key"],
                                        recipients=data.get("recipients"), segment=data.get("segment"),
                                        data=data.get("data") or {})
        code = status.HTTP_200_OK if job.finished else status.HTTP_202_ACCEPTED
        return Response(_job_body(job, not created), status=code)


@read_schema(list_out=JobOut, list_summary="List the API's background jobs of the kinds this token starts "
                                            "(oldest first, pages)")
class JobViewSet(TokenApiView, PagedList, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Background jobs started through the API; a token sees the kinds its scopes start."""

    serializer_class = list_serializer = JobOut

    def scope_for(self, request) -> str:
        token = request.auth
        return next((s for s in (ApiScope.TRIGGER, ApiScope.CUSTOMERS_WRITE, ApiScope.EXPORT) if s in token.scopes),
                    ApiScope.TRIGGER)

    def get_queryset(self):
        return workflows_api.jobs_for_token(token=self.request.auth)

    @extend_schema(responses={200: JobOut, 404: refusal("no such job"), **REFUSALS},
                   summary="A background job's status, progress and result")
    def retrieve(self, request, *args, **kwargs):
        from journeys.services.jobs import job_has_chunks, jobs_purge_exports

        jobs_purge_exports()
        job = self.get_object()
        data = self.get_serializer(job).data
        if job_has_chunks(job):  # the copy itself is downloaded (streamed), not put inline
            data["result"] = {**data["result"], "download": request.build_absolute_uri(
                reverse("api-job-download", args=[job.pk]))}
        return Response(data)

    @extend_schema(responses={200: OpenApiResponse(description="the data-subject export (JSON), streamed"),
                              404: refusal("no such job, or it has no export to download (not finished, expired "
                                            "or erased)"), **REFUSALS},
                   summary="Download a data-subject export job's result")
    @action(detail=True, methods=["get"])
    def download(self, request, pk=None):
        from journeys.services.jobs import job_chunks, job_has_chunks, jobs_purge_exports

        jobs_purge_exports()
        job = self.get_object()
        if job.status != "succeeded" or not job_has_chunks(job):
            raise NotFound("this job has no export to download (not finished, expired after a day, or erased)")
        response = StreamingHttpResponse(job_chunks(job), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-export.json"'
        return response
