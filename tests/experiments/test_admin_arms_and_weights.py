"""Arms and weights as the admin takes them: one control, weights that are numbers a share can be
drawn from, and a split that never fails a run on a weight it finds. And who created an
experiment is a fact, not a setting."""

from __future__ import annotations

import pytest
from django.urls import reverse

from experiments.models import Arm, Assignment, Experiment
from journeys.models import JourneyRun
from tests.experiments.factories import make_experiment, split_workflow
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import admin_form_data

pytestmark = pytest.mark.django_db
ADD = reverse("admin:experiments_experiment_add")


def _arms(data: dict, *rows: dict) -> dict:
    data["arms-TOTAL_FORMS"] = len(rows)
    for i, row in enumerate(rows):
        data.update({f"arms-{i}-{name}": value for name, value in row.items()})
    return data


def _add_form(client, *rows: dict) -> dict:
    data = admin_form_data(client.get(ADD), key="welcome", name="Welcome", change_reason="plan the test")
    return _arms(data, *rows)


def _inline_errors(response) -> str:
    formset = response.context["inline_admin_formsets"][0].formset
    return " | ".join([str(e) for form in formset.errors for errors in form.values() for e in errors]
                      + list(formset.non_form_errors()))


# --------------------------------------------------------------------------- the arm inline


def test_two_control_arms_on_the_add_form_are_refused_at_the_inline(admin_client):
    # given the add form with two arms, both ticked as the control
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": 1},
                     {"name": "short", "is_control": "on", "weight": 1})

    # when it is saved
    response = admin_client.post(ADD, data)

    # then the second arm says only one can be the control, and nothing was created
    assert response.status_code == 200
    assert "only one arm can be the control" in _inline_errors(response)
    assert not Experiment.objects.exists()


@pytest.mark.parametrize(("weights", "message"), [
    ((1e308, 1e308), "must be from 0 to 1,000,000"),
    ((0, 0), "at least one active arm needs a weight above 0"),
])
def test_weights_no_split_can_use_are_refused_at_the_inline(admin_client, weights, message):
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": weights[0]},
                     {"name": "short", "weight": weights[1]})

    response = admin_client.post(ADD, data)

    assert response.status_code == 200
    assert message in _inline_errors(response)
    assert not Experiment.objects.exists()


def test_one_control_and_usable_weights_are_saved(admin_client):
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": 1}, {"name": "short", "weight": 3})

    assert admin_client.post(ADD, data).status_code == 302
    assert dict(Arm.objects.values_list("name", "weight")) == {"control": 1.0, "short": 3.0}


def test_an_arm_on_its_own_page_cannot_become_a_second_control(admin_client):
    # given a draft experiment whose control is "control"
    short = make_experiment(start=False).arms.get(name="short")
    url = reverse("admin:experiments_arm_change", args=[short.pk])

    # when "short" is ticked as the control on its own page
    response = admin_client.post(url, admin_form_data(admin_client.get(url), is_control="on", change_reason="swap"))

    # then the field says which arm is the control; nothing changed
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "only one arm can be the control: control is the control" in " ".join(errors["is_control"]), errors
    assert not Arm.objects.get(pk=short.pk).is_control


# --------------------------------------------------------------------------- the report's weights action


@pytest.mark.parametrize(("weights", "message"), [
    ({"w_control": "1e308", "w_short": "1e308"}, "weight control: Ensure this value is less than or equal to 1000000"),
    ({"w_control": "inf", "w_short": "1"}, "weight control: Enter a number."),
    ({"w_control": "0", "w_short": "0"}, "at least one active arm needs a weight above 0"),
])
def test_weights_the_split_cannot_use_are_refused_on_the_report(admin_client, weights, message):
    # given a running experiment
    experiment = make_experiment()
    act = reverse("admin:experiments_experiment_act", args=[experiment.pk])

    # when the report's weights action gets weights no share can be drawn from
    response = admin_client.post(act, {"action": "weights", "reason": "ramp", **weights}, follow=True)

    # then it says which field and what, and the weights stay as they were
    shown = " ".join(str(m) for m in response.context["messages"])
    assert message in shown, shown
    assert dict(Arm.objects.values_list("name", "weight")) == {"control": 1.0, "short": 1.0}


def test_the_services_refuse_the_same_weights_and_keep_the_experiments_name():
    from django.core.exceptions import ValidationError

    from experiments.services.experiments import experiment_create, experiment_set_weights

    control = {"name": "control", "control": True}
    with pytest.raises(ValidationError, match="short: weight must be from 0 to 1,000,000"):
        experiment_create(key="huge", name="Huge", arms=[control, {"name": "short", "weight": 1e308}])
    with pytest.raises(ValidationError, match="at least one active arm needs a weight above 0"):
        experiment_create(key="none", name="None", arms=[{**control, "weight": 0}, {"name": "short", "weight": 0}])
    created = experiment_create(key="welcome", name="Welcome mail", arms=[control, {"name": "short", "weight": 3}])
    assert created.name == "Welcome mail" and not Experiment.objects.exclude(pk=created.pk).exists()

    with pytest.raises(ValidationError, match="control: weight must be a number"):
        experiment_set_weights(experiment=created, weights={"control": float("inf")}, reason="more")
    with pytest.raises(ValidationError, match="at least one active arm needs a weight above 0"):
        experiment_set_weights(experiment=created, weights={"control": 0, "short": 0}, reason="none")
    assert dict(Arm.objects.values_list("name", "weight")) == {"control": 1.0, "short": 3.0}


# --------------------------------------------------------------------------- the split step


@pytest.mark.parametrize(("control", "short", "arms"), [
    (1e308, 1e308, {"control", "short"}),          # the sum overflows: equal shares
    (float("inf"), 1.0, {"control", "short"}),     # not a number a share is drawn from: equal shares
    (-1.0, 1.0, {"control", "short"}),
    (0.0, 0.0, {"control"}),                       # nobody has weight: everyone to control
])
def test_a_running_split_never_fails_on_a_weight_it_finds(publish, send, control, short, arms):
    # given a running experiment whose weights were written around every form
    make_experiment()
    publish(split_workflow())
    Arm.objects.filter(name="control").update(weight=control)
    Arm.objects.filter(name="short").update(weight=short)

    # when new customers enter
    for i in range(30):
        send(userId=f"n{i}", event="Signed Up")

    # then every run went through the split, deterministically, and each was assigned
    assert not JourneyRun.objects.filter(status="failed").exists()
    assert JourneyRun.objects.filter(status="completed").count() == 30
    assert set(Assignment.objects.values_list("arm__name", flat=True)) == arms


# --------------------------------------------------------------------------- who created it


def test_created_by_is_shown_but_not_changed_on_the_experiment_page(admin_client, admin_user):
    # given an experiment created by the admin user
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": 1}, {"name": "short", "weight": 1})
    admin_client.post(ADD, data)
    experiment = Experiment.objects.get(key="welcome")
    url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
    page = admin_client.get(url)
    someone = UserFactory(username="someone")

    # when a change posts another creator
    response = admin_client.post(url, {**admin_form_data(page), "created_by": someone.pk, "change_reason": "x"})

    # then the page offers no such field and the creator stays who created it
    assert response.status_code == 302
    assert 'name="created_by"' not in page.content.decode()
    assert Experiment.objects.get(pk=experiment.pk).created_by == admin_user


# --------------------------------------------------------------------------- the rules the services enforce


def test_an_arm_named_holdout_is_refused_at_its_name_on_the_add_form_and_on_its_own_page(admin_client):
    from experiments.services.experiments import RESERVED_ARM_NAME

    # given the add form with an arm named like the held-out group (assignment would give it nobody)
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": 1},
                     {"name": "holdout", "weight": 1})

    response = admin_client.post(ADD, data)

    # then that arm's name says why, as the service does, and nothing was created
    assert response.status_code == 200
    formset = response.context["inline_admin_formsets"][0].formset
    assert formset.errors[1] == {"name": [RESERVED_ARM_NAME]}
    assert not Experiment.objects.exists()

    # and an existing arm cannot be renamed so on its own page
    short = make_experiment(start=False).arms.get(name="short")
    url = reverse("admin:experiments_arm_change", args=[short.pk])
    response = admin_client.post(url, admin_form_data(admin_client.get(url), name="holdout", change_reason="rename"))
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["name"] == [RESERVED_ARM_NAME]
    assert Arm.objects.get(pk=short.pk).name == "short"


def test_arms_without_a_control_are_refused_on_the_add_form_and_on_the_arms_page(admin_client):
    data = _add_form(admin_client, {"name": "control", "weight": 1}, {"name": "short", "weight": 1})

    response = admin_client.post(ADD, data)

    assert response.status_code == 200
    assert "exactly one arm must be the control" in _inline_errors(response)
    assert not Experiment.objects.exists()

    control = make_experiment(start=False).arms.get(name="control")
    url = reverse("admin:experiments_arm_change", args=[control.pk])
    data = admin_form_data(admin_client.get(url), change_reason="untick")
    data.pop("is_control")
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert "exactly one arm must be the control" in " ".join(response.context["adminform"].form.errors["is_control"])
    assert Arm.objects.get(pk=control.pk).is_control


SETTINGS = [
    ("bandit_floor", "-3", "must be from 0 to 0.5"),
    ("exploration_share", "7", "must be from 0 to 1"),
    ("window_s", "0", "must be at least 1"),
    ("secondary_metrics", '["nope"]', "unknown metric 'nope'"),
    ("secondary_metrics", '{"a": 1}', "must be a list of metric names"),
]


@pytest.mark.parametrize(("field", "value", "message"), SETTINGS)
def test_settings_the_service_refuses_are_refused_at_their_field_in_the_admin(admin_client, field, value, message):
    # given the add form with usable arms and one setting the experiment cannot run by
    data = _add_form(admin_client, {"name": "control", "is_control": "on", "weight": 1}, {"name": "short", "weight": 1})
    data[field] = value

    response = admin_client.post(ADD, data)

    # then that field says what is wrong, and nothing was created
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors.get(field, [])), errors
    assert not Experiment.objects.exists()

    # and so does the change form of an existing experiment
    experiment = make_experiment(start=False)
    url = reverse("admin:experiments_experiment_change", args=[experiment.pk])
    response = admin_client.post(url, admin_form_data(admin_client.get(url), **{field: value, "change_reason": "x"}))
    assert response.status_code == 200
    assert message in " ".join(response.context["adminform"].form.errors.get(field, []))


@pytest.mark.parametrize(("field", "value", "message"), SETTINGS)
def test_the_services_refuse_the_same_settings_naming_the_field(field, value, message):
    import json

    from django.core.exceptions import ValidationError

    from experiments.services.experiments import experiment_create, experiment_settings_save

    value = json.loads(value)
    arms = [{"name": "control", "control": True}, {"name": "short"}]
    with pytest.raises(ValidationError) as created:
        experiment_create(key="bad", name="Bad", arms=arms, **{field: value})
    assert message in " ".join(created.value.message_dict[field])
    experiment = make_experiment(start=False)
    setattr(experiment, field, value)
    with pytest.raises(ValidationError) as saved:
        experiment_settings_save(experiment=experiment, actor=None, reason="x")
    assert message in " ".join(saved.value.message_dict[field])
    with pytest.raises(ValidationError, match=f"arm 'holdout': 'holdout' is reserved"):
        experiment_create(key="held", name="Held", arms=[*arms, {"name": "holdout"}])
