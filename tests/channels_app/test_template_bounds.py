"""Templates are bounded (issue #15 item 10): rendered size, loops, padding filters and content
blocks inside content blocks; a block that includes itself is refused when saved and never
breaks a render."""

from __future__ import annotations

import pytest

from channels_app.models import ContentBlock
from channels_app.services.templates import TemplateRenderError, template_render
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


def block_form(name, body, **extra):
    return {"name": name, "description": "", "variants": f'[{{"rule": "", "body": "{body}"}}]',
            "change_reason": "test", **extra}


@pytest.mark.parametrize("text, why", [
    ("{{ 'a'|ljust:'50000000' }}", "|ljust: at most 1,000"),
    ("{{ 5|stringformat:'050000000d' }}", "|stringformat: at most 1,000"),
    ("{{ 1.5|floatformat:'100000' }}", "|floatformat: at most 1,000"),
    ("{% for a in event.l %}{% for b in event.l %}{% for c in event.l %}x{% endfor %}{% endfor %}{% endfor %}",
     "loops ran more than 10,000 times"),
    ("{% for a in event.l %}{{ event.s }}{% endfor %}", "longer than 200,000 characters"),
])
def test_costly_templates_fail_with_the_reason(text, why):
    template = TemplateFactory(body=text)
    with pytest.raises(TemplateRenderError, match=why.replace("|", r"\|")):
        template_render(template=template, context={"event": {"l": list(range(100)), "s": "y" * 5000}})


def test_the_admin_preview_says_why_instead_of_a_50_mb_page(admin_client):
    template = TemplateFactory(body="{{ 'a'|ljust:'50000000' }}")
    CustomerFactory(external_id="ada")
    response = admin_client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": "ada"})
    assert response.status_code == 400 and len(response.content) < 100_000
    assert "|ljust: at most 1,000" in response.content.decode()


def test_a_costly_template_fails_the_delivery_not_the_sender(on_commit):
    from channels_app.services import message_send

    channel = ChannelFactory(name="console", kind="email", provider="console")
    with on_commit():
        delivery = message_send(customer=CustomerFactory(email="a@example.com"), channel=channel,
                                template=TemplateFactory(body="{{ 'a'|ljust:'50000000' }}"),
                                idempotency_key="k", context={})
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == ("failed", "template_error") and "ljust" in delivery.error


def test_a_block_that_includes_itself_is_refused_when_saved_directly_or_through_others(admin_client):
    ContentBlock.objects.create(name="b", variants=[{"rule": "", "body": "B {% content_block 'c' %}"}])
    ContentBlock.objects.create(name="c", variants=[{"rule": "", "body": "C {% content_block 'a' %}"}])

    direct = admin_client.post("/admin/channels_app/contentblock/add/", block_form("a", "A {% content_block 'a' %}"))
    through = admin_client.post("/admin/channels_app/contentblock/add/", block_form("a", "A {% content_block 'b' %}"))

    assert "it would include itself: a -&gt; a" in direct.content.decode()
    assert "it would include itself: a -&gt; b -&gt; c -&gt; a" in through.content.decode()
    assert not ContentBlock.objects.filter(name="a").exists()
    ok = admin_client.post("/admin/channels_app/contentblock/add/", block_form("a", "A {% content_block 'd' %}"))
    assert ok.status_code == 302


def test_a_stored_cycle_renders_with_an_error_never_a_500(admin_client):
    # given blocks that include each other, saved around the admin's check
    ContentBlock.objects.create(name="x", variants=[{"rule": "", "body": "X{% content_block 'y' %}"}])
    ContentBlock.objects.create(name="y", variants=[{"rule": "", "body": "Y{% content_block 'x' %}"}])
    template = TemplateFactory(body="start {% content_block 'x' %} end")

    rendered = template_render(template=template, context={})
    CustomerFactory(external_id="ada")
    page = admin_client.post(f"/admin/channels_app/messagetemplate/{template.pk}/preview/", {"customer": "ada"})

    assert rendered.body == "start XY end"
    assert rendered.errors == ["content block 'x' includes itself (x -> y -> x)"]
    assert page.status_code == 200 and "includes itself" in page.content.decode()
