"""The experiment admin: report page (SVG charts, loud SRM warning), CSV export, actions, permissions."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from experiments.models import Arm, Assignment, Experiment
from experiments.services.assignment import assignment_decide
from tests.experiments.factories import (
    make_customers,
    make_experiment,
    make_goal_events,
)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = UserFactory(username="ops", is_staff=True, is_superuser=True)
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def viewer_client(client):
    user = UserFactory(username="analyst", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_experiment"))
    client.force_login(user)
    return client


def report(client, experiment, **params):
    return client.get(reverse("admin:experiments_experiment_report", args=[experiment.pk]), params)


def test_report_page_shows_arms_charts_funnel_and_cohorts(admin_client, running):
    response = report(admin_client, running)

    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<svg") >= 3  # conversion over time, cohorts, funnel
    assert 'aria-label="conversion over time per arm"' in html and 'aria-label="funnel"' in html
    for group in ("control", "short", "holdout"):
        assert f">{group}" in html
    assert "always valid" in html and "Recommendation" in html
    assert "SAMPLE RATIO MISMATCH" not in html
    assert "Attribution (last touch within the window)" in html
    trait = report(admin_client, running, kind="trait", trait="plan")
    assert trait.status_code == 200 and "(none)" in trait.content.decode()


def test_report_warns_loudly_on_sample_ratio_mismatch(admin_client):
    experiment = make_experiment()
    for c in make_customers(600):
        assignment_decide(experiment=experiment, customer=c, now=timezone.now())
    Assignment.objects.filter(
        pk__in=list(Assignment.objects.filter(arm__name="short").values_list("pk", flat=True))[:120]
    ).delete()

    html = report(admin_client, experiment).content.decode()

    assert 'class="exp-srm" role="alert">SAMPLE RATIO MISMATCH' in html
    assert "Do not act" in html


def test_csv_export_has_one_row_per_group_with_the_report_numbers(admin_client, running):
    url = reverse("admin:experiments_experiment_csv", args=[running.pk])

    response = admin_client.get(url, {"section": "arms"})

    assert response.status_code == 200 and response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [r["group"] for r in rows] == ["control", "short", "holdout"]
    assert sum(int(r["exposures"]) for r in rows) == 40 == Assignment.objects.count()
    assert sum(int(r["conversions"]) for r in rows) == 14
    for section in ("timeseries", "cohorts", "funnel", "attribution"):
        part = admin_client.get(url, {"section": section})
        assert part.status_code == 200 and len(part.content.decode().splitlines()) > 1, section
    funnel = list(csv.DictReader(io.StringIO(admin_client.get(url, {"section": "funnel"}).content.decode())))
    assert funnel[0]["step"] == "(entered)" and funnel[0]["reached"] == "40"
    assert admin_client.get(url, {"section": "nope"}).status_code == 400


def test_conclude_and_retire_from_the_report_are_recorded_with_the_user(admin_client, running):
    act = reverse("admin:experiments_experiment_act", args=[running.pk])
    arms = {a.name: a for a in running.arms.all()}

    weights = admin_client.post(act, {"action": "weights", "w_control": "1", "w_short": "3", "reason": "ramp"})
    assert weights.status_code == 302
    assert Arm.objects.get(pk=arms["short"].pk).history.first().history_user == admin_client.user

    admin_client.post(act, {"action": "retire", "arm": arms["short"].pk, "reason": "hurts retention"})
    retired = Arm.objects.get(pk=arms["short"].pk)
    assert retired.retired_at is not None
    assert retired.history.first().history_change_reason == "retired: hurts retention"
    assert retired.history.first().history_user == admin_client.user

    bad = admin_client.post(act, {"action": "conclude", "winner": arms["short"].pk, "reason": "x"}, follow=True)
    assert Experiment.objects.get(pk=running.pk).status == "running"
    assert b"Select a valid choice" in bad.content

    admin_client.post(act, {"action": "conclude", "winner": arms["control"].pk, "reason": "no lift"})
    experiment = Experiment.objects.get(pk=running.pk)
    assert experiment.status == "concluded" and experiment.winner_id == arms["control"].pk
    assert experiment.history.first().history_user == admin_client.user
    history = admin_client.get(reverse("admin:experiments_experiment_history", args=[running.pk]))
    assert history.status_code == 200 and b"concluded, winner control" in history.content


def test_viewer_sees_the_report_but_cannot_act(viewer_client, running):
    assert report(viewer_client, running).status_code == 200
    assert b"Act on the results" not in report(viewer_client, running).content
    act = reverse("admin:experiments_experiment_act", args=[running.pk])
    response = viewer_client.post(act, {"action": "conclude", "winner": running.arms.first().pk, "reason": "me"})
    assert response.status_code == 403
    assert Experiment.objects.get(pk=running.pk).status == "running"


def test_staff_without_permission_cannot_open_the_report(client, running):
    user = UserFactory(username="nobody", is_staff=True)
    client.force_login(user)
    assert report(client, running).status_code == 403


def test_next_best_action_is_trained_and_explained_in_the_admin(admin_client):
    experiment = make_experiment(goal_event="Order Completed", mode="personalized")
    rng = np.random.default_rng(4)
    customers = make_customers(120)
    converters = []
    for c in customers:
        c.traits = {"ltv": int(rng.integers(0, 2000))}
        c.save()
        d = assignment_decide(experiment=experiment, customer=c, now=timezone.now())
        if rng.random() < (0.6 if (d.arm.name == "short") == (c.traits["ltv"] > 1000) else 0.1):
            converters.append(c)
    make_goal_events(converters, name="Order Completed", at=timezone.now() + timedelta(minutes=1))
    act = reverse("admin:experiments_experiment_act", args=[experiment.pk])

    admin_client.post(act, {"action": "train", "features": "ltv, tenure_days"})
    page = report(admin_client, experiment, customer=customers[0].external_id).content.decode()

    assert "Model trained" in page and "← chosen" in page and "ltv=" in page
    model = experiment.models.get()
    detail = admin_client.get(reverse("admin:experiments_propensitymodel_change", args=[model.pk]))
    assert detail.status_code == 200 and b"sigmoid(intercept" in detail.content


@pytest.mark.parametrize("name", ["experiment", "arm", "assignment", "propensitymodel"])
def test_admin_changelists_and_change_pages_open(admin_client, running, name):
    response = admin_client.get(reverse(f"admin:experiments_{name}_changelist"))
    assert response.status_code == 200
    model = {"experiment": Experiment, "arm": Arm, "assignment": Assignment}.get(name)
    if model is not None:
        obj = model.objects.first()
        assert admin_client.get(reverse(f"admin:experiments_{name}_change", args=[obj.pk])).status_code == 200


def test_report_of_a_fresh_draft_without_arms_or_exposures_opens(admin_client):
    experiment = Experiment.objects.create(key="empty", name="Empty")
    response = report(admin_client, experiment)
    assert response.status_code == 200 and b"No exposures yet" in response.content
    csv_url = reverse("admin:experiments_experiment_csv", args=[experiment.pk])
    assert admin_client.get(csv_url, {"section": "arms"}).status_code == 200


def test_csv_cells_a_spreadsheet_would_run_as_formulas_arrive_as_text(admin_client):
    """Trait values are customer data (a form, a client app): in the cohort CSV a value that
    starts like a formula gets a leading quote (OWASP, CSV injection); numbers stay numbers."""
    experiment = make_experiment()
    values = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\tTAB", "\rCR",
              "-0.25", "42", "pro"]
    for n, value in enumerate(values):
        for c in make_customers(3, prefix=f"v{n}-", traits={"plan": value}):
            assignment_decide(experiment=experiment, customer=c, now=timezone.now())
    url = reverse("admin:experiments_experiment_csv", args=[experiment.pk])

    response = admin_client.get(url, {"section": "cohorts", "kind": "trait", "trait": "plan"})

    cohorts = {row["cohort"] for row in csv.DictReader(io.StringIO(response.content.decode()))}
    assert cohorts == {"'=HYPERLINK(\"http://x\",\"y\")", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1:A9)", "'\tTAB",
                       "'\rCR", "-0.25", "42", "pro"}
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert all(not cell.startswith(("=", "+", "@", "\t", "\r")) for row in rows for cell in row)
