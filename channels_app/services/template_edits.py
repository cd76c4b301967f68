"""Message templates as people edit them in the admin: a template with its locale variants is
one page, saved only over what that page showed (`template_save`)."""

from __future__ import annotations

from django.db import transaction

from channels_app.models import MessageTemplate, TemplateVariant
from journeys.errors import DraftChanged
from journeys.services.governance import history_stamp
from journeys.services.references import config_rename_check
from journeys.services.stale_edits import DELETED_SINCE, edit_refuse_stale, edit_token

TEMPLATE_FIELDS = ("name", "channel_kind", "topic_id", "subject", "body", "html_body")
VARIANT_FIELDS = ("locale", "subject", "body", "html_body")


def template_token(*, template: MessageTemplate) -> str:
    """The template's page as it shows it: its text and settings and those of its variants."""
    variants = sorted(([getattr(v, f) for f in ("id", *VARIANT_FIELDS)] for v in template.variants.all()),
                      key=lambda row: row[0])
    return edit_token({**{f: getattr(template, f) for f in TEMPLATE_FIELDS}, "variants": variants})


@transaction.atomic
def template_save(*, template: MessageTemplate, actor, reason: str, loaded: str | None = None) -> MessageTemplate:
    """Save a template edited on its page (its variants are saved after it, in the same
    transaction, while the template row stays locked). `loaded` (`template_token` of the page):
    when the template or one of its variants was saved since the page was opened, nothing is
    saved (`DraftChanged`, naming who and when), or a live workflow would send the text the other
    person had replaced."""
    if template.pk is not None and loaded is not None:  # (None: new, or restored from a deleted one's history)
        current = MessageTemplate.objects.select_for_update().filter(pk=template.pk).first()
        if current is None:
            raise DraftChanged(DELETED_SINCE.format(what=f"template {template.name}"), code="changed_meanwhile")
        edit_refuse_stale(loaded=loaded, now=template_token(template=current), what=f"template {current.name}",
                          history=[current.history.all(), TemplateVariant.history.filter(template_id=current.pk)])
        config_rename_check(what="template", old=current.name, new=template.name)
    history_stamp(template, actor=actor, reason=reason).save()
    return template


def template_restore_scope(*, template_id: int | str) -> str:
    """What restoring a template from its history does not do, in words for its page: the locale
    variants are rows of their own (with their own history) and stay as they are now."""
    variants = sorted(TemplateVariant.objects.filter(template_id=template_id).values_list("locale", flat=True))
    if not MessageTemplate.objects.filter(pk=template_id).exists():
        return ("Restoring brings the template back with the name, channel kind, topic, subject and bodies shown "
                "here. Its locale variants were deleted with it and are not restored: add them again on its page.")
    now = f"its variants now: {', '.join(variants)}" if variants else "it has no variants now"
    return ("Restoring puts back the name, channel kind, topic, subject and bodies shown here. Its locale variants "
            f"are not restored: they stay as they are now ({now}); change them on the template's page.")
