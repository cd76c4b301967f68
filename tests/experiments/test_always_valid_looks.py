"""The always-valid test reads looks on closed conversion windows and claims the direction of the
looks that rejected; the bandit learns from known outcomes only; bandit mode decides nothing on
the pooled comparison.

QA (expstats) found: an arm converting as often as control, only later in its window, was
auto-retired or recommended as the winner (the running minimum kept a look taken while its
customers' windows were open, and the direction came from today's difference); the bandit counted
customers still inside their window as failures and pushed an equally good arm to the floor; and in
bandit mode an arm identical to control was auto-retired because the pooled comparison mixed a
drifting base rate with the bandit's shifting split (Simpson's paradox)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from experiments.models import Arm, Assignment, Experiment
from experiments.services.analysis import experiment_analyze, experiment_auto_retire, experiment_auto_retire_check
from experiments.services.bandits import experiment_bandit_update
from experiments.tasks import experiments_refresh
from tests.experiments.factories import make_customers, make_experiment, make_goal_events
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

DAY = 86400
_batches = [0]


def seed(experiment: Experiment, arm: str, n: int, *, at: datetime, converting: int, after: timedelta,
         weights: dict[str, float]) -> None:
    """`n` customers assigned `arm` at `at` (recorded with `weights`), the first `converting` of them
    buying `after` their entry (a goal event of the experiment's; those due after now are not sent yet)."""
    _batches[0] += 1
    prefix = f"s{_batches[0]}-"
    customers = make_customers(n, prefix=prefix)
    arm_row = Arm.objects.get(experiment=experiment, name=arm)
    Assignment.objects.bulk_create([Assignment(experiment=experiment, customer=c, arm=arm_row, bucket=0.5,
                                               weights=weights, assigned_at=at) for c in customers])
    if at + after <= timezone.now():
        make_goal_events(customers[:converting], name=experiment.goal_event, at=at + after, prefix=prefix)


@pytest.fixture
def ops(client):
    client.force_login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    return client


def late_arm_experiment(key: str, b_per_day: int, *, b_delay: timedelta = timedelta(hours=36)) -> Experiment:
    """Control and b, 300 customers each a day for 7 days, ending 4 days ago (every 2-day window
    closed); control's 30 buyers a day buy 30 minutes after entry, b's `b_per_day` after `b_delay`."""
    experiment = make_experiment(key=key, arms=[{"name": "control", "control": True}, {"name": "b"}],
                                 goal_event="Buy", window_s=2 * DAY, auto_retire=True,
                                 now=timezone.now() - timedelta(days=12))
    start = timezone.now() - timedelta(days=11)
    half = {"control": 0.5, "b": 0.5}
    for day in range(7):
        at = start + timedelta(days=day)
        seed(experiment, "control", 300, at=at, converting=30, after=timedelta(minutes=30), weights=half)
        seed(experiment, "b", 300, at=at, converting=b_per_day, after=b_delay, weights=half)
    return Experiment.objects.get(pk=experiment.pk)


@pytest.mark.parametrize("b_per_day", [32, 28], ids=["b-slightly-ahead", "b-slightly-behind"])
def test_an_arm_that_converts_as_often_only_later_is_neither_recommended_nor_retired(b_per_day, ops):
    # given b converting at about control's rate (10.7 % or 9.3 % vs 10 %), 36 h after entry instead of
    # 30 min, every window closed (on the days when b's windows were open, b looked far worse)
    experiment = late_arm_experiment("late", b_per_day)

    # when the report is read and the 15-minute refresh runs auto-retire
    analysis = experiment_analyze(experiment=experiment)
    experiments_refresh()

    # then nothing is claimed: b is neither the winner nor worse, and it is not retired
    b = next(g for g in analysis.groups if g.name == "b")
    assert b.p_value > 0.3 and b.p_always_valid > experiment.alpha, (b.p_value, b.p_always_valid)
    assert b.direction is None and not b.significant
    assert "beats control" not in analysis.recommendation and "Worse than control" not in analysis.recommendation
    assert Arm.objects.get(experiment=experiment, name="b").retired_at is None


def test_a_truly_worse_arm_is_still_retired_and_its_tiny_p_is_not_printed_as_zero(ops):
    # given b converting at half control's rate (5 % vs 10 %), late in its window, every window closed
    experiment = late_arm_experiment("worse", 15)

    # when the report is read, and auto-retire runs
    analysis = experiment_analyze(experiment=experiment)
    b = next(g for g in analysis.groups if g.name == "b")
    page = ops.get(reverse("admin:experiments_experiment_report", args=[experiment.pk])).content.decode()
    response = ops.get(reverse("admin:experiments_experiment_csv", args=[experiment.pk]) + "?section=arms")
    rows = {row["group"]: row for row in csv.DictReader(io.StringIO(response.content.decode()))}
    retired = experiment_auto_retire(experiment=experiment)

    # then the tiny p-values keep their digits: CSV in %.6g, the page says "< 0.0001", not 0.0000
    assert b.p_value < 1e-6 and b.p_always_valid < 1e-4
    assert float(rows["b"]["p_value"]) == pytest.approx(b.p_value, rel=1e-5)
    assert float(rows["b"]["p_always_valid"]) == pytest.approx(b.p_always_valid, rel=1e-5)
    assert "&lt; 0.0001" in page and "0.0000<" not in page
    # and b is worse on the looks that rejected, retired, with that p in the reason
    assert b.direction == "worse" and b.p_worse < experiment.alpha
    assert "Worse than control: b" in analysis.recommendation
    assert [a.name for a in retired] == ["b"]
    assert f"always-valid p={b.p_worse:.3g}" in Arm.history.filter(name="b").latest("history_id").history_change_reason


def test_the_bandit_learns_only_from_customers_whose_window_closed():
    # given a bandit, 1-day window, both arms converting 10 % 12 h after entry: ctl's 1,200 customers
    # entered 2 days ago, x's 600 then and 600 in the last hour (their outcome not known yet)
    experiment = make_experiment(key="banditb", mode="bandit", goal_event="Buy", window_s=DAY,
                                 arms=[{"name": "ctl", "control": True}, {"name": "x"}],
                                 now=timezone.now() - timedelta(days=3))
    half, now = {"ctl": 0.5, "x": 0.5}, timezone.now()
    seed(experiment, "ctl", 1200, at=now - timedelta(days=2), converting=120, after=timedelta(hours=12), weights=half)
    seed(experiment, "x", 600, at=now - timedelta(days=2), converting=60, after=timedelta(hours=12), weights=half)
    seed(experiment, "x", 600, at=now - timedelta(hours=1), converting=60, after=timedelta(hours=12), weights=half)

    # when the every-minute bandit update runs
    weights = experiment_bandit_update(experiment=experiment)

    # then x is read as 60/600 (as good as ctl's 120/1200), not 60/1200, and keeps a fair share
    assert 0.25 < weights["x"] < 0.75 and 0.25 < weights["ctl"] < 0.75, weights


def test_a_bandit_arm_with_no_closed_window_keeps_its_prior():
    # given a bandit whose arms both entered customers an hour ago (1-day window): ctl's already bought
    experiment = make_experiment(key="banditp", mode="bandit", goal_event="Buy", window_s=DAY,
                                 arms=[{"name": "ctl", "control": True}, {"name": "x"}])
    half, now = {"ctl": 0.5, "x": 0.5}, timezone.now()
    seed(experiment, "ctl", 300, at=now - timedelta(hours=1), converting=100, after=timedelta(minutes=5), weights=half)
    seed(experiment, "x", 300, at=now - timedelta(hours=1), converting=0, after=timedelta(minutes=5), weights=half)

    # when the bandit updates
    weights = experiment_bandit_update(experiment=experiment)

    # then nothing is known yet: both keep the prior, an even split
    assert weights == pytest.approx({"ctl": 0.5, "x": 0.5}, abs=0.02)


def simpson_bandit(key: str, x_rate_factor: float = 1.0) -> Experiment:
    """A bandit: 5,000 customers a day; 3 days ago the base rate was 12 % and 80 % went to ctl, 2 days
    ago 8 % and 80 % to x (as a bandit moves weight); x converts at `x_rate_factor` times ctl's rate."""
    experiment = make_experiment(key=key, mode="bandit", goal_event="Buy", window_s=3600, auto_retire=True,
                                 arms=[{"name": "ctl", "control": True}, {"name": "x"}],
                                 now=timezone.now() - timedelta(days=4))
    for days_ago, rate, ctl_share in ((3, 0.12, 0.8), (2, 0.08, 0.2)):
        at, weights = timezone.now() - timedelta(days=days_ago), {"ctl": ctl_share, "x": 1 - ctl_share}
        n_ctl = int(5000 * ctl_share)
        n_x = 5000 - n_ctl
        seed(experiment, "ctl", n_ctl, at=at, converting=round(n_ctl * rate), after=timedelta(minutes=10),
             weights=weights)
        seed(experiment, "x", n_x, at=at, converting=round(n_x * rate * x_rate_factor), after=timedelta(minutes=10),
             weights=weights)
    return Experiment.objects.get(pk=experiment.pk)


def test_a_bandit_arm_identical_to_control_is_not_retired_for_the_bandits_shifting_split(ops):
    # given identical arms, a base rate drifting 12 % -> 8 % while the split moved 80/20 -> 20/80
    # (pooled: ctl 11.2 %, x 8.8 %, yet each day's rates are equal)
    experiment = simpson_bandit("simpson")

    # when the report is read and the 15-minute refresh runs (auto-retire on)
    analysis = experiment_analyze(experiment=experiment)
    experiments_refresh()

    # then x is not retired nor called worse, and the report says why no arm is decided
    x = next(g for g in analysis.groups if g.name == "x")
    assert x.diff[0] < -0.02  # the pooled gap
    assert x.direction is None and not x.significant
    assert "Worse than control" not in analysis.recommendation
    assert Arm.objects.get(experiment=experiment, name="x").retired_at is None
    assert any("Simpson" in w for w in analysis.warnings)
    # and within each allocation the arms are compared as they are: equal (the QA's Mantel-Haenszel p)
    assert x.p_stratified == pytest.approx(1.0)
    assert "Within the bandit's allocations" in " ".join(analysis.warnings)


def test_a_truly_worse_bandit_arm_is_left_to_the_bandit_and_the_page_says_why(ops):
    # given a bandit arm converting at half control's rate, and the same shifting split
    experiment = simpson_bandit("worsebandit", x_rate_factor=0.5)

    # when ops check auto-retire from the report page, and read it
    retired, held = experiment_auto_retire_check(experiment=experiment)
    page = ops.get(reverse("admin:experiments_experiment_report", args=[experiment.pk])).content.decode()
    weights = experiment_bandit_update(experiment=experiment)

    # then no decision is made on the pooled comparison, the page says so and why, and the bandit
    # itself sends x's traffic to its floor
    assert retired == [] and held.startswith("bandit mode")
    assert "auto-retire retires none in bandit mode" in page and "Simpson" in page
    assert "Bandit mode: no arm is called better or worse, nor auto-retired" in page
    assert weights["x"] == pytest.approx(experiment.bandit_floor)
    # and the within-allocation comparison, shown on the page, sees the difference
    x = next(g for g in experiment_analyze(experiment=experiment).groups if g.name == "x")
    assert x.p_stratified < 1e-6 and f"x vs ctl p = {x.p_stratified:.3g}" in page
