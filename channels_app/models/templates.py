from __future__ import annotations

from django.db import models
from django.db.models.functions import Lower
from simple_history.models import HistoricalRecords

from channels_app.choices import ChannelKind


class MessageTemplate(models.Model):
    """Subject, text and HTML body in the (sandboxed) Django template language.

    Its topic decides which consent applies; locale variants and content blocks
    adapt it without copying it.
    """

    name = models.CharField(max_length=100, unique=True)
    channel_kind = models.CharField(max_length=10, choices=ChannelKind.choices, blank=True,
                                    help_text="empty = any channel")
    topic = models.ForeignKey("channels_app.Topic", null=True, blank=True, on_delete=models.PROTECT,
                              help_text="consent topic; empty = only global and channel-wide opt-outs apply")
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField(help_text="plain text (SMS, push, the text part of an email)")
    html_body = models.TextField(blank=True, help_text="email HTML (autoescaped); links are click-tracked")
    history = HistoricalRecords()

    def __str__(self) -> str:
        return self.name


class TemplateVariant(models.Model):
    """The same message in another locale (`fr`, `pt-BR`); empty fields fall back to the template.

    `locale` is a BCP 47 language tag in its canonical form (checked and written so at save,
    `variant_locale_clean`); one variant per tag whatever its case, as customers' locales are
    matched ignoring case (`template_variant`)."""

    template = models.ForeignKey(MessageTemplate, on_delete=models.CASCADE, related_name="variants")
    locale = models.CharField(max_length=16, help_text="language tag, e.g. fr, pt-BR, zh-Hant-TW")
    subject = models.CharField(max_length=255, blank=True)
    body = models.TextField(blank=True)
    html_body = models.TextField(blank=True)
    history = HistoricalRecords()

    class Meta:
        constraints = [models.UniqueConstraint(
            "template", Lower("locale"), name="template_variant_locale_ci_unique",
            violation_error_message="there is a variant for this language tag already (whatever its case)")]

    def __str__(self) -> str:
        return f"{self.template.name} [{self.locale}]"


class ContentBlock(models.Model):
    """A reusable piece of content that adapts to the customer: `{% content_block "offer" %}`.

    `variants` is a list of {"rule": "<journey rule>", "body": "<template>"}; the first
    whose rule is true renders (an empty rule always matches).
    """

    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=255, blank=True)
    variants = models.JSONField(default=list, blank=True)
    history = HistoricalRecords()

    def __str__(self) -> str:
        return self.name
