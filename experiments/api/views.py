"""Experiments API (/api/v1/experiments): list and read experiments, and their results as the
report page shows them (experiments.services.results). Read-only; scope `experiments:read`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.response import Response

from experiments.choices import ExperimentMode, ExperimentStatus
from experiments.models import Arm, Experiment
from experiments.services.results import experiment_results, experiments_list
from journeys.api.management import REFUSALS, ReadOnlyViewSet, read_schema, refusal
from journeys.choices import ApiScope


class ArmOut(serializers.ModelSerializer):
    class Meta:
        model = Arm
        fields = ("id", "name", "is_control", "weight", "retired_at", "retired_reason")


class ExperimentListOut(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=ExperimentStatus.choices)
    mode = serializers.ChoiceField(choices=ExperimentMode.choices)
    winner = serializers.CharField(source="winner_name", allow_null=True, help_text="the winning arm, once concluded")

    class Meta:
        model = Experiment
        fields = ("id", "key", "name", "status", "mode", "workflow_id", "goal_event", "window_s", "holdout_share",
                  "winner", "started_at", "stopped_at", "concluded_at", "updated_at")


class ExperimentOut(ExperimentListOut):
    arms = ArmOut(many=True)
    secondary_metrics = serializers.ListField(child=serializers.CharField())

    class Meta(ExperimentListOut.Meta):
        fields = (*ExperimentListOut.Meta.fields, "hypothesis", "alpha", "power", "baseline_rate",
                  "min_detectable_effect", "secondary_metrics", "arms")


class IntervalOut(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)


class GroupOut(serializers.Serializer):
    name = serializers.CharField(help_text="an arm's name, or holdout")
    is_control = serializers.BooleanField()
    holdout = serializers.BooleanField()
    retired = serializers.BooleanField()
    weight = serializers.FloatField(allow_null=True)
    exposures = serializers.IntegerField()
    conversions = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True, help_text="Wilson interval at the experiment's alpha")
    ci_high = serializers.FloatField(allow_null=True)
    abs_lift = IntervalOut(allow_null=True, help_text="vs control (Newcombe interval); null for control/holdout")
    rel_lift = IntervalOut(allow_null=True, help_text="vs control (Katz log interval)")
    z = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True, help_text="fixed-horizon two-proportion z-test")
    p_always_valid = serializers.FloatField(allow_null=True, help_text="mSPRT: safe however often one looks")
    significant = serializers.BooleanField(
        help_text="the always-valid test rejects, on one side only (see direction); never in bandit mode")
    direction = serializers.ChoiceField(
        choices=["better", "worse"], allow_null=True,
        help_text="vs control, from the looks that rejected (each look counts closed conversion windows only)")
    secondary = serializers.DictField(help_text="secondary metrics by name (open_rate, click_rate, completion...)")


class SrmOut(serializers.Serializer):
    chi2 = serializers.FloatField(allow_null=True)
    p_value = serializers.FloatField(allow_null=True)
    observed = serializers.DictField(child=serializers.IntegerField())
    expected = serializers.DictField(child=serializers.FloatField(allow_null=True))
    mismatch = serializers.BooleanField(help_text="p < 0.001: the split is broken; no recommendation is made")
    message = serializers.CharField()


class MaturityOut(serializers.Serializer):
    readable = serializers.BooleanField(help_text="most exposures have had their full conversion window")
    readable_at = serializers.DateTimeField(allow_null=True)
    exposures = serializers.IntegerField()
    closed = serializers.IntegerField(help_text="exposures whose conversion window has closed")
    window_s = serializers.IntegerField()


class ResultsOut(serializers.Serializer):
    computed_at = serializers.DateTimeField()
    groups = GroupOut(many=True)
    srm = SrmOut(allow_null=True, help_text="sample-ratio check; null before there is anything to compare")
    plan_per_arm = serializers.IntegerField(help_text="fixed-horizon sample size per arm")
    min_arm_exposures = serializers.IntegerField()
    plan_reached = serializers.BooleanField()
    maturity = MaturityOut()
    messaging_effect = GroupOut(allow_null=True, help_text="control vs holdout")
    warnings = serializers.ListField(child=serializers.CharField())
    recommendation = serializers.CharField()


@read_schema(list_out=ExperimentListOut, list_summary="List experiments (by id, pages)", noun="experiment",
             one_out=ExperimentOut, one_summary="An experiment: settings and arms")
class ExperimentViewSet(ReadOnlyViewSet):
    """Experiments and their results (the report page's numbers)."""

    scope = ApiScope.EXPERIMENTS_READ
    serializer_class = ExperimentOut
    list_serializer = ExperimentListOut

    def get_queryset(self):
        return experiments_list(with_arms=self.action == "retrieve")

    @extend_schema(responses={200: ResultsOut, 404: refusal("no such experiment"), **REFUSALS},
                   summary="An experiment's results, as its report page shows them (lift, intervals, "
                           "p-values, sample-ratio check, maturity, recommendation)")
    @action(detail=True, methods=["get"])
    def results(self, request, pk=None):
        return Response(ResultsOut(experiment_results(experiment=self.get_object())).data)
