"""Experiments through the management API: list and read them, and their results with the
numbers of the report page (the same analysis, never recomputed); scope experiments:read."""

from __future__ import annotations

import csv
import io

import pytest
from django.urls import reverse

from experiments.models import Experiment
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.experiments.factories import make_experiment
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader():
    _, key = make_token(ApiScope.EXPERIMENTS_READ, name="analysts")
    return Api(key)


def report_csv_rows(client, experiment) -> dict[str, dict]:
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    response = client.get(reverse("admin:experiments_experiment_csv", args=[experiment.pk]), {"section": "arms"})
    return {row["group"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}


def close(api_value, csv_value: str) -> bool:
    return (api_value is None and csv_value == "") or abs(api_value - float(csv_value)) < 1e-6


def test_results_are_the_report_pages_numbers(reader, client, running):
    # when the results of an experiment run through the engine are read through the API
    response = reader.get(f"experiments/{running.pk}/results")

    # then every group has the report's exposures, conversions, rates, intervals and p-values
    assert response.status_code == 200, response.body
    body = response.body
    report = report_csv_rows(client, running)
    assert [g["name"] for g in body["groups"]] == list(report) == ["control", "short", "holdout"]
    for group in body["groups"]:
        row = report[group["name"]]
        assert (group["exposures"], group["conversions"]) == (int(row["exposures"]), int(row["conversions"]))
        for ours, theirs in (("rate", "rate"), ("ci_low", "ci_low"), ("ci_high", "ci_high"), ("z", "z"),
                             ("p_value", "p_value"), ("p_always_valid", "p_always_valid")):
            assert close(group[ours], row[theirs]), (group["name"], ours, group[ours], row[theirs])
        lift = group["abs_lift"] or {"value": None, "low": None, "high": None}
        assert close(lift["value"], row["abs_lift"]) and close(lift["low"], row["abs_lift_low"])
    assert sum(g["exposures"] for g in body["groups"]) == 40
    assert close(body["srm"]["p_value"] if body["srm"] else None, report["control"]["srm_p_value"])
    # and what the page says around the table: maturity, plan, recommendation, secondary metrics
    assert body["recommendation"] and isinstance(body["warnings"], list)
    assert {"readable", "readable_at", "exposures", "closed", "window_s"} <= set(body["maturity"])
    assert "completion" in body["groups"][0]["secondary"]


def test_experiments_are_listed_and_read_with_their_arms(reader):
    # given a running experiment and a draft one
    welcome = make_experiment(key="welcome", goal_event="Order Completed")
    draft = make_experiment(key="later", start=False)

    # when listed and read
    rows = {row["key"]: row for row in reader.pages("experiments")}
    one = reader.get(f"experiments/{welcome.pk}").body

    # then each says its state, mode and metric; the detail its arms
    assert (rows["welcome"]["status"], rows["welcome"]["mode"], rows["welcome"]["goal_event"]) == (
        "running", "fixed", "Order Completed")
    assert rows["later"]["id"] == draft.pk and rows["later"]["status"] == "draft" and rows["later"]["winner"] is None
    assert [(a["name"], a["is_control"]) for a in one["arms"]] == [("control", True), ("short", False)]


def test_results_of_an_experiment_nobody_entered_are_readable(reader):
    experiment = make_experiment(key="empty")
    body = reader.get(f"experiments/{experiment.pk}/results").body
    assert [(g["name"], g["exposures"], g["abs_lift"]) for g in body["groups"]] == [("control", 0, None),
                                                                                    ("short", 0, None)]


def test_paging_has_no_duplicates_or_skips_while_experiments_are_added(reader):
    before = [make_experiment(key=f"e{n}", start=False).pk for n in range(5)]
    added: list[int] = []

    rows = reader.pages("experiments?limit=2",
                     between=lambda: added.append(make_experiment(key=f"new{len(added)}", start=False).pk))

    assert [row["id"] for row in rows] == before + added and len(added) == 3


@pytest.mark.parametrize("path", ["experiments", "experiments/1", "experiments/1/results"])
def test_a_token_without_the_scope_is_refused_naming_it(path):
    _, key = make_token(ApiScope.WORKFLOWS_READ, name="platform")
    response = Api(key).get(path)
    assert (response.status_code, response.body["message"]) == (403, "this token lacks the 'experiments:read' scope")


@pytest.mark.parametrize("path", ["experiments/4242", "experiments/4242/results"])
def test_an_unknown_experiment_is_a_404_naming_it(reader, path):
    response = reader.get(path)
    assert (response.status_code, response.body["message"]) == (404, "no experiment with id 4242")
    assert not Experiment.objects.exists()


def test_bad_paging_is_a_400_naming_the_parameter(reader):
    response = reader.get("experiments?limit=501x")
    assert (response.status_code, response.body["field"]) == (400, "limit")
