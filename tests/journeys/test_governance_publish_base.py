"""An approval is of a diff against a base (the live version when the change was proposed): once
another version went live, publishing the approved one would also take back what went live since,
which nobody reviewed. It is refused, saying so, until the review is refreshed against what is live
now and approved again."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.urls import reverse

from journeys.models import ChangeRequest, Step, Workflow, WorkflowVersion
from journeys.services.workflows import (
    change_request_refresh,
    version_approve,
    version_canary_start,
    version_publish,
    version_submit,
)
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import draft_of, login

pytestmark = pytest.mark.django_db


def _approved(workflow, people, author, step_traits):
    """A draft from the live version with step vip's traits changed, proposed and approved."""
    draft = draft_of(workflow, actor=people[author])
    Step.objects.filter(version=draft, key="vip").update(config={"traits": step_traits})
    request = version_submit(version=draft, actor=people[author], summary=f"vip: {step_traits}")
    version_approve(version=draft, actor=people["approver"], comment="fine")
    return WorkflowVersion.objects.get(pk=draft.pk), request


def test_an_approved_change_whose_base_is_no_longer_live_is_refused_until_reviewed_again(people, live_workflow):
    # given two changes proposed from v1 and both approved
    v1 = live_workflow.live_version
    first, _ = _approved(live_workflow, people, "editor", {"segment": "gold"})
    second, request = _approved(live_workflow, people, "ops", {"segment": "vip", "tier": 2})
    version_publish(version=first, actor=people["approver"], reason="first change")

    # when the second is published (or staged as a canary) after the first went live
    for attempt in (lambda: version_publish(version=second, actor=people["approver2"], reason="second change"),
                    lambda: version_canary_start(version=second, percent=10, actor=people["approver2"],
                                                 reason="try it")):
        with pytest.raises(ValidationError) as refused:
            attempt()

        # then it is refused, naming the base and what is live now; the first stays live
        assert (f"v{second.number} was approved as a change to v{v1.number}, but v{first.number} is live now"
                in str(refused.value))
    workflow = Workflow.objects.get(pk=live_workflow.pk)
    assert (workflow.live_version_id, workflow.canary_version_id) == (first.pk, None)

    # and once the review is refreshed (compared with v2 now), it needs a new approval before it goes live
    change_request_refresh(change_request=request, actor=people["approver2"])
    second.refresh_from_db()
    request.refresh_from_db()
    assert (second.state, request.status, request.base_version_id) == ("in_review", "open", first.pk)
    with pytest.raises(ValidationError, match="only approved versions can go live"):
        version_publish(version=second, actor=people["approver2"], reason="second change")
    version_approve(version=second, actor=people["approver2"], comment="seen against v2")
    version_publish(version=second, actor=people["approver2"], reason="second change")
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == second.pk


def test_the_review_page_says_why_publishing_a_change_to_an_older_base_is_refused(client, people, live_workflow):
    # given two approved changes from v1, the first published
    v1 = live_workflow.live_version
    first, _ = _approved(live_workflow, people, "editor", {"segment": "gold"})
    second, request = _approved(live_workflow, people, "ops", {"segment": "vip", "tier": 2})
    version_publish(version=first, actor=people["approver"], reason="first change")

    # when an approver presses Publish on the second's review page
    login(client, people["approver2"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])
    response = client.post(url, {"decision": "publish", "comment": "second change"})

    # then the page says it was refused and why, and the first change stays live
    said = [m.message for m in get_messages(response.wsgi_request)]
    assert len(said) == 1 and said[0].startswith(
        f"publish: v{second.number} was approved as a change to v{v1.number}, but v{first.number} is live now")
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == first.pk
    assert ChangeRequest.objects.get(pk=request.pk).status == "approved"


def test_a_proposal_whose_base_is_no_longer_live_is_approved_only_after_its_review_is_refreshed(client, people,
                                                                                               live_workflow):
    # given two changes proposed from v1; the first approved and published, the second still in review
    v1 = live_workflow.live_version
    second = draft_of(live_workflow, actor=people["ops"], entry_rule="profile.ltv >= 0")
    request = version_submit(version=second, actor=people["ops"], summary="only customers with an ltv")
    first, _ = _approved(live_workflow, people, "editor", {"segment": "gold"})
    version_publish(version=first, actor=people["approver"], reason="first change")

    # when the approver opens its review page, and approves
    login(client, people["approver2"])
    url = reverse("admin:journeys_changerequest_change", args=[request.pk])
    opened = [m.message for m in get_messages(client.get(url).wsgi_request)]
    with pytest.raises(ValidationError, match=f"proposed as a change to v{v1.number}, but v{first.number} is live"):
        version_approve(version=second, actor=people["approver2"], comment="fine")

    # then the page said so, and once refreshed it can be approved and published
    assert opened == [f"v{second.number} was proposed as a change to v{v1.number}, but v{first.number} is live now: "
                      f"refresh its review (it is then compared with v{first.number}) before approving it"]
    change_request_refresh(change_request=request, actor=people["approver2"])
    version_approve(version=second, actor=people["approver2"], comment="fine")
    version_publish(version=second, actor=people["approver2"], reason="go")
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == second.pk
