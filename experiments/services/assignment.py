"""Who gets which arm: deterministic, sticky, recorded once per customer.

The position of a customer is a hash of the experiment's salt and the
customer id, so the same customer always lands in the same place. The first
assignment is stored (unique per experiment and customer); later entries
reuse it, so changing weights only affects customers not yet assigned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef

from experiments.choices import HOLDOUT, AssignmentVia, ExperimentMode, ExperimentStatus
from experiments.models import Arm, Assignment, Experiment
from experiments.services.hashing import hash_unit
from journeys.engine.batch import IdMap, rows_move
from journeys.services.identity import MergePairs, merge_hook


def assignment_weights(
    *, experiment: Experiment, arm_names: list[str] | None = None, arms: list[Arm] | None = None
) -> dict[str, float]:
    """The current assignment distribution: active arms (normalised, net of holdout) plus 'holdout'."""
    all_arms = arms if arms is not None else list(experiment.arms.all())
    arms = [a for a in all_arms if a.active and (arm_names is None or a.name in arm_names)]
    share = experiment.holdout_share
    arms_w = _shares(arms)
    if not arms_w:
        control = next((a for a in all_arms if a.is_control), None)
        arms_w = {control.name: 1.0} if control else {}
    weights = {name: w * (1 - share) for name, w in arms_w.items()}
    if share > 0:
        weights[HOLDOUT] = share
    return weights


def _shares(arms: list[Arm]) -> dict[str, float]:
    """The arms' weights as shares of one. A running journey never fails on a weight it finds:
    weights no form lets through (not a number, infinite, negative) give every arm an equal share;
    huge ones are scaled before they are added (1e308 + 1e308 is infinite, and every share 0).
    All 0 (or no arm): {} - the caller sends everyone to control."""
    weights = [a.weight for a in arms]
    if not all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights):
        return {a.name: 1 / len(arms) for a in arms}
    top = max(weights, default=0)
    if top <= 0:
        return {}
    total = sum(w / top for w in weights)
    return {a.name: w / top / total for a, w in zip(arms, weights)}


def pick_by_weight(weights: dict[str, float], u: float) -> str:
    """The arm whose slice of [0, 1) contains u (weights need not sum to one)."""
    names = [n for n, w in weights.items() if w > 0]
    total = sum(weights[n] for n in names)
    acc = 0.0
    for name in names:
        acc += weights[name] / total
        if u < acc:
            return name
    return names[-1]


@dataclass
class Decision:
    """What the split decided for one entry, and why (shown in the run log and dry runs)."""

    arm: Arm
    holdout: bool
    reason: str
    recorded: bool = False
    assignment: Assignment | None = None
    bucket: float | None = None
    scores: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)  # the distribution it was drawn from (recorded with it)
    via: str = AssignmentVia.HASH

    @property
    def group(self) -> str:
        return HOLDOUT if self.holdout else self.arm.name


def _control(experiment: Experiment, arms: list[Arm]) -> Arm:
    control = next((a for a in arms if a.is_control), None)
    if control is None:
        raise ValueError(f"experiment {experiment.key} has no control arm")
    return control


def _settled(experiment: Experiment, all_arms: list[Arm], control: Arm) -> Decision | None:
    """The decision of a concluded experiment: every entry, the holdout's too, follows the winner
    (the report counts conversions up to `concluded_at` only)."""
    if experiment.status == ExperimentStatus.CONCLUDED:
        winner = next((a for a in all_arms if a.pk == experiment.winner_id), control)
        return Decision(arm=winner, holdout=False, reason=f"concluded: every entry goes to the winner {winner.name}")
    return None


def _paused(experiment: Experiment, control: Arm, existing: Assignment | None) -> Decision:
    """The decision of an experiment that does not assign (draft, stopped): control, nothing
    recorded; a customer held out earlier stays held out (no messages while it is paused), one
    assigned an arm follows control (the safe stop; the report does not count conversions while
    it is stopped)."""
    status = experiment.status
    if existing is not None and existing.holdout:
        return Decision(arm=control, holdout=True, assignment=existing, bucket=existing.bucket,
                        reason=f"experiment is {status}: held out earlier, still no messages")
    if existing is not None:
        return Decision(arm=control, holdout=False, assignment=existing, bucket=existing.bucket,
                        reason=f"experiment is {status}: assigned {existing.arm.name} earlier, follows control")
    return Decision(arm=control, holdout=False, reason=f"experiment is {status}: control, not recorded")


def _sticky(existing: Assignment, control: Arm, reason: str = "assigned earlier (sticky)") -> Decision:
    if existing.arm.retired_at is not None and not existing.holdout:
        return Decision(arm=control, holdout=False, assignment=existing, bucket=existing.bucket,
                        reason=f"assigned {existing.arm.name} earlier, which is retired: control")
    return Decision(arm=existing.arm, holdout=existing.holdout, assignment=existing, bucket=existing.bucket,
                    reason=reason)


def _fresh(*, experiment: Experiment, all_arms: list[Arm], control: Arm, customer, now: datetime,
           arm_names: list[str] | None, model=None) -> Decision:
    """A first assignment: holdout by hash, then the arm by hash of the weights (or the model:
    a callable giving the next-best-action model, else the latest is read)."""
    weights = assignment_weights(experiment=experiment, arm_names=arm_names, arms=all_arms)
    arms = {a.name: a for a in all_arms}
    u_holdout = hash_unit(experiment.salt, "holdout", customer.pk)
    u_arm = hash_unit(experiment.salt, "arm", customer.pk)
    via, scores = AssignmentVia.HASH, {}
    if u_holdout < experiment.holdout_share:
        holdout, arm, reason = True, control, "holdout: follows control, no messages"
    else:
        holdout = False
        arm_weights = {k: v for k, v in weights.items() if k != HOLDOUT}
        name = pick_by_weight(arm_weights, u_arm)
        reason = f"hash bucket {u_arm:.4f} of weights {_rounded(arm_weights)}"
        if experiment.mode == ExperimentMode.PERSONALIZED:
            from experiments.services.nba import nba_choose, nba_model

            choice = nba_choose(model=model() if model is not None else nba_model(experiment), customer=customer,
                                arm_names=list(arm_weights), now=now)
            if (
                choice is not None
                and hash_unit(experiment.salt, "explore", customer.pk) >= experiment.exploration_share
            ):
                name, scores, via = choice.arm, choice.scores, AssignmentVia.MODEL
                reason = f"next-best-action: {choice.explanation}"
            elif choice is not None:
                scores, reason = choice.scores, f"exploring at random ({reason})"
        arm = arms[name]
    return Decision(arm=arm, holdout=holdout, reason=reason, bucket=u_arm, scores=scores, weights=weights, via=via)


def _assignment(experiment: Experiment, customer, decision: Decision, *, run_id, version_id, now) -> Assignment:
    return Assignment(experiment=experiment, customer=customer, arm=decision.arm, holdout=decision.holdout,
                      via=decision.via, bucket=decision.bucket, weights=decision.weights, scores=decision.scores,
                      run_id=run_id, version_id=version_id, assigned_at=now)


def assignment_decide(
    *,
    experiment: Experiment,
    customer,
    now: datetime,
    arm_names: list[str] | None = None,
    run_id: int | None = None,
    version_id: int | None = None,
    dry_run: bool = False,
) -> Decision:
    """Choose the path for this entry; record the assignment unless this is a dry run.

    Draft/stopped experiments send everyone down control unrecorded, except that a customer held
    out earlier stays held out; a concluded one sends every entry to the winner. A customer
    already assigned keeps the arm (unless it was retired: then control).
    """
    all_arms = list(experiment.arms.all())
    control = _control(experiment, all_arms)
    settled = _settled(experiment, all_arms, control)
    if settled is not None:
        return settled
    existing = Assignment.objects.select_related("arm").filter(experiment=experiment, customer=customer).first()
    if experiment.status != ExperimentStatus.RUNNING:
        return _paused(experiment, control, existing)
    if existing is not None:
        return _sticky(existing, control)
    decision = _fresh(experiment=experiment, all_arms=all_arms, control=control, customer=customer, now=now,
                      arm_names=arm_names)
    if dry_run:
        decision.reason = f"would assign: {decision.reason} (dry run, nothing recorded)"
        return decision
    try:
        with transaction.atomic():
            assignment = _assignment(experiment, customer, decision, run_id=run_id, version_id=version_id, now=now)
            assignment.save(force_insert=True)
            decision.assignment, decision.recorded = assignment, True
    except IntegrityError:  # a concurrent entry recorded it first: use theirs
        existing = Assignment.objects.select_related("arm").get(experiment=experiment, customer=customer)
        return _sticky(existing, control, reason="assigned concurrently (sticky)")
    return decision


class AssignmentRaced(Exception):
    """Another transaction recorded a different arm for a customer this batch assigned: the engine
    replays the batch one entry at a time, where assignment_decide takes theirs."""


class AssignmentBatch:
    """assignment_decide for one engine batch (`journeys.engine.batch`, experiment_split is
    batch-safe): the experiment and its arms are read once per batch, the batch's customers'
    earlier assignments with one query per experiment, and `flush()` records the new ones with
    one INSERT ... ON CONFLICT DO NOTHING. An entry of the same customer later in the batch is
    sticky to what the batch decided. A conflict (another worker recorded the customer first)
    is fine when it holds the same arm (the hash decides both); otherwise AssignmentRaced.
    Bandit weights are not touched here (experiments.services.bandits.bandits_update_due, every minute).
    """

    KEY = "experiments.assign"

    def __init__(self, batch) -> None:
        self.customer_ids = list(batch.customer_ids)
        self.now = batch.now
        self._experiments: dict[str, tuple[Experiment | None, list[Arm]]] = {}
        self._assigned: dict[int, dict[int, Assignment]] = {}
        self._models: dict[int, object] = {}
        self.pending: list[Assignment] = []

    @classmethod
    def current(cls) -> AssignmentBatch | None:
        from journeys.engine.batch import current_batch

        batch = current_batch()
        return batch.extension(cls.KEY, cls) if batch is not None else None

    def experiment(self, key: str) -> Experiment | None:
        if key not in self._experiments:
            experiment = Experiment.objects.filter(key=key).first()
            self._experiments[key] = (experiment, list(experiment.arms.all()) if experiment else [])
        return self._experiments[key][0]

    def _earlier(self, experiment: Experiment) -> dict[int, Assignment]:
        if experiment.pk not in self._assigned:
            from journeys.engine.batch import ids_q

            found = Assignment.objects.select_related("arm").filter(ids_q("customer_id", self.customer_ids),
                                                                   experiment=experiment)
            self._assigned[experiment.pk] = {a.customer_id: a for a in found}
        return self._assigned[experiment.pk]

    def _model(self, experiment: Experiment):
        """The next-best-action model, read once per batch (personalized experiments only ask)."""
        if experiment.pk not in self._models:
            from experiments.services.nba import nba_model

            self._models[experiment.pk] = nba_model(experiment)
        return self._models[experiment.pk]

    def decide(self, *, experiment: Experiment, customer, now: datetime, arm_names: list[str] | None,
               run_id: int | None, version_id: int | None) -> Decision:
        all_arms = self._experiments[experiment.key][1]
        control = _control(experiment, all_arms)
        settled = _settled(experiment, all_arms, control)
        if settled is not None:
            return settled
        assigned = self._earlier(experiment)
        if experiment.status != ExperimentStatus.RUNNING:
            return _paused(experiment, control, assigned.get(customer.pk))
        if customer.pk in assigned:
            return _sticky(assigned[customer.pk], control)
        decision = _fresh(experiment=experiment, all_arms=all_arms, control=control, customer=customer, now=now,
                          arm_names=arm_names, model=lambda: self._model(experiment))
        assignment = _assignment(experiment, customer, decision, run_id=run_id, version_id=version_id, now=now)
        assigned[customer.pk] = decision.assignment = assignment
        decision.recorded = True
        self.pending.append(assignment)
        return decision

    def flush(self) -> None:
        if not self.pending:
            return
        from journeys.engine.batch import insert_ignore_returning

        pending, self.pending = self.pending, []
        inserted = set(insert_ignore_returning(Assignment, pending, ["experiment_id", "customer_id"]))
        lost = [a for a in pending if (a.experiment_id, a.customer_id) not in inserted]
        for mine in lost:
            theirs = Assignment.objects.select_related("arm").get(experiment_id=mine.experiment_id,
                                                                  customer_id=mine.customer_id)
            if (theirs.arm_id, theirs.holdout) != (mine.arm_id, mine.holdout):
                raise AssignmentRaced(f"customer {mine.customer_id} was assigned {theirs.arm.name} concurrently")
            self._assigned[mine.experiment_id][mine.customer_id] = theirs


def _rounded(weights: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in weights.items()}


@merge_hook
def assignments_merge(pairs: MergePairs) -> None:
    """Identity merge hook: per experiment, the survivor keeps its own assignment, else takes the
    absorbed one's (which otherwise stays with the absorbed profile). One UPDATE for all pairs."""
    survivors = {merged.pk: target.pk for merged, target in pairs}
    survivor_has_one = Exists(Assignment.objects.filter(customer_id=IdMap(OuterRef("customer_id"), survivors),
                                                        experiment_id=OuterRef("experiment_id")))
    rows_move(Assignment.objects.exclude(survivor_has_one), pairs)


def assignments_export(customer) -> tuple[str, list]:
    """EXPORTERS entry (right of access): the person's experiment assignments, theirs and those of
    the profiles merged into them: the experiment, the arm or holdout they got and how, their
    hash position, the weights in force and, for next-best-action, the response predicted for
    each arm (a profiling decision about them)."""
    from channels_app.services.privacy import customer_profile_ids

    assignments = (Assignment.objects.filter(customer_id__in=customer_profile_ids(customer))
                   .select_related("experiment", "arm").order_by("assigned_at", "id"))
    return "experiment_assignments", [
        {"experiment": a.experiment_id, "experiment_name": a.experiment.name, "arm": a.arm.name,
         "holdout": a.holdout, "via": a.via, "bucket": a.bucket, "weights": a.weights, "scores": a.scores,
         "run": a.run_id, "version": a.version_id, "assigned_at": a.assigned_at}
        for a in assignments
    ]
