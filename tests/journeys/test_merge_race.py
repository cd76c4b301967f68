"""A merge while another worker enrols the surviving customer (PostgreSQL, real commits)."""

from __future__ import annotations

import pytest

from journeys.models import Customer, JourneyRun
from journeys.services.identity import customer_merge
from tests.marks import on_postgres
from tests.proc import committed_meanwhile

from .test_engine import WAIT, publish, unit  # noqa: F401  (fixtures)

pytestmark = on_postgres("two transactions race on the one-open-run constraint")


def test_a_merge_that_races_an_enrolment_of_the_survivor_ends_the_absorbed_run(publish, send):  # noqa: F811
    """The survivor enters the journey in another worker's batch, not yet committed, while the
    absorbed profile's run moves to them: the move waits for that batch, and when it commits the
    merge still goes through, the absorbed run ending as a run of someone already on the journey."""
    publish(WAIT)
    send(anonymousId="dev-1", event="Signed Up")
    send("identify", userId="m1")
    anonymous = Customer.objects.get(identities__value="dev-1")
    known = Customer.objects.get(external_id="m1")
    theirs = JourneyRun.objects.get(customer=anonymous)

    def other_worker_enrols():
        JourneyRun.objects.create(workflow_id=theirs.workflow_id, version_id=theirs.version_id, customer=known,
                                  trigger_key="other-batch", status="waiting", exclusive=True)

    with committed_meanwhile(other_worker_enrols):
        customer_merge(target=known, merged=anonymous, reason="signed in", actor="test")

    runs = {r.trigger_key: r for r in JourneyRun.objects.all()}
    assert runs["other-batch"].status == "waiting" and runs["other-batch"].customer_id == known.pk
    absorbed = runs[theirs.trigger_key]
    assert absorbed.status == "exited" and "already on this journey" in absorbed.error
    assert Customer.objects.get(pk=anonymous.pk).merged_into_id == known.pk
