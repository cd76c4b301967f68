"""Experiments belong to a business unit through their workflow: an editor drafts the experiments of
their unit's workflows and nothing else; starting, weights, retiring and concluding (live traffic)
stay with ops. The admin and the services apply the same rule (`experiment_user_can`)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from experiments.models import Experiment
from experiments.services.bandits import experiment_bandit_update
from experiments.services.experiments import (
    experiment_create,
    experiment_settings_save,
    experiment_start,
    experiments_for_user,
)
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, login

pytestmark = pytest.mark.django_db

ARMS = [{"name": "control", "control": True}, {"name": "short"}]


def test_an_editor_drafts_experiments_only_for_their_units_workflows(people, live_workflow, support_workflow):
    editor = people["editor"]
    mine = experiment_create(key="mine", name="Mine", arms=ARMS, workflow=live_workflow, actor=editor)
    assert mine.created_by == editor
    with pytest.raises(PermissionDenied):
        experiment_create(key="theirs", name="Theirs", arms=ARMS, workflow=support_workflow, actor=editor)
    with pytest.raises(PermissionDenied):
        experiment_create(key="loose", name="No workflow", arms=ARMS, actor=people["analyst"])

    theirs = experiment_create(key="theirs", name="Theirs", arms=ARMS, workflow=support_workflow)
    assert set(experiments_for_user(editor)) == {mine}
    assert set(experiments_for_user(people["analyst"])) == {mine, theirs}
    assert not experiments_for_user(people["agent"]).exists()


def test_live_traffic_stays_with_ops(people, live_workflow):
    experiment = experiment_create(key="mine", name="Mine", arms=ARMS, workflow=live_workflow)
    with pytest.raises(PermissionDenied):
        experiment_start(experiment=experiment, actor=people["editor"], reason="go")
    with pytest.raises(PermissionDenied):
        experiment_bandit_update(experiment=experiment, actor=people["approver"])
    started = experiment_start(experiment=experiment, actor=people["ops"], reason="approved plan")
    started.hypothesis = "changed while running"
    with pytest.raises(PermissionDenied):  # a running experiment is no longer the editor's draft
        experiment_settings_save(experiment=started, actor=people["editor"], reason="tweak")


def test_the_service_rechecks_the_stored_row_and_the_new_values(people, live_workflow, support_workflow):
    editor = people["editor"]
    theirs = experiment_create(key="theirs", name="Theirs", arms=ARMS, workflow=support_workflow)
    theirs.workflow = live_workflow  # pull another unit's experiment into mine
    with pytest.raises(PermissionDenied):
        experiment_settings_save(experiment=theirs, actor=editor, reason="mine now")
    mine = experiment_create(key="mine", name="Mine", arms=ARMS, workflow=live_workflow)
    mine.workflow = support_workflow  # push mine out of my reach
    with pytest.raises(PermissionDenied):
        experiment_settings_save(experiment=mine, actor=editor, reason="theirs now")
    assert Experiment.objects.get(key="mine").workflow == live_workflow


def test_an_editor_edits_their_draft_in_the_admin_and_cannot_move_it(client, people, live_workflow,
                                                                      support_workflow):
    experiment = experiment_create(key="mine", name="Mine", arms=ARMS, workflow=live_workflow)
    login(client, people["editor"])
    url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
    page = client.get(url)
    offered = {w.pk for w in page.context["adminform"].form.fields["workflow"].queryset}
    assert offered == {live_workflow.pk}

    moved = client.post(url, admin_form_data(page, workflow=support_workflow.pk, change_reason="move"))
    assert moved.status_code == 200 and "Select a valid choice" in moved.content.decode()
    saved = client.post(url, admin_form_data(page, holdout_share=0.05, change_reason="keep 5% as holdout"))
    assert saved.status_code == 302
    row = Experiment.objects.get(pk=experiment.pk).history.latest("history_date")
    assert (row.holdout_share, row.workflow_id, row.history_user, row.history_change_reason) == (
        0.05, live_workflow.pk, people["editor"], "keep 5% as holdout")

    report = client.get(reverse("admin:experiments_experiment_report", args=[experiment.pk]))
    assert report.status_code == 200
    act = client.post(reverse("admin:experiments_experiment_act", args=[experiment.pk]),
                      {"action": "weights", "w_control": 1, "w_short": 3, "reason": "more"})
    assert act.status_code == 403  # operating an experiment is for ops


def test_the_arm_lists_experiment_filter_names_only_the_editors_experiments(client, people, live_workflow,
                                                                           support_workflow):
    # given two experiments on the editor's workflow and one on the other unit's
    experiment_create(key="mine", name="Mine", arms=ARMS, workflow=live_workflow)
    experiment_create(key="mine2", name="Mine too", arms=ARMS, workflow=live_workflow)
    experiment_create(key="theirs", name="Theirs", arms=ARMS, workflow=support_workflow)

    # when the Retention editor opens the arm list
    login(client, people["editor"])
    page = client.get(reverse("admin:experiments_arm_changelist")).content.decode()

    # then the rows and the sidebar name their experiment, and not the other unit's
    assert "Mine (mine)" in page and "Mine too (mine2)" in page and "mine:control" in page
    assert "theirs" not in page.lower()
    # and ops see both in the sidebar
    login(client, people["ops"])
    assert "Theirs (theirs)" in client.get(reverse("admin:experiments_arm_changelist")).content.decode()
