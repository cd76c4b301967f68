"""Templates (syntax checked at save, locale variants, preview) and content blocks."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from channels_app.models import ContentBlock, MessageTemplate, TemplateVariant
from channels_app.services import template_check
from channels_app.services.preview import template_preview
from channels_app.services.templates import (
    content_block_cycle, content_block_missing_error, template_unknown_warning, variant_locale_clean,
    variant_locale_duplicates,
)
from channels_app.services.template_edits import template_restore_scope, template_save, template_token
from channels_app.admin.base import InUseDeleteMixin
from journeys.admin.base import HistoryReasonMixin, StalePageMixin, form_rename_check
from journeys.errors import JourneyError
from journeys.services.event_parsing import json_read_storable


class TemplateForm(forms.ModelForm):
    class Meta:
        model = MessageTemplate
        fields = ("name", "channel_kind", "topic", "subject", "body", "html_body")

    def clean_name(self):
        return form_rename_check(self, what="template")

    def clean(self):
        data = super().clean()
        self.warnings = []  # shown once saved (MessageTemplateAdmin.save_related)
        for field in ("subject", "body", "html_body"):
            text = data.get(field) or ""
            if error := template_check(text=text) or content_block_missing_error(text=text):
                self.add_error(field, f"template error: {error}")
            elif warning := template_unknown_warning(text=text):
                self.warnings.append(f"{self._label()}{self.fields[field].label}: {warning}")
        return data

    def _label(self) -> str:
        return ""


class VariantForm(TemplateForm):
    class Meta:
        model = TemplateVariant
        fields = ("locale", "subject", "body", "html_body")

    def clean_locale(self):
        try:
            return variant_locale_clean(locale=self.cleaned_data.get("locale") or "")
        except JourneyError as exc:
            raise forms.ValidationError(exc.message) from None

    def _label(self) -> str:
        return f"variant {self.cleaned_data.get('locale') or ''}, "


class VariantFormSet(forms.BaseInlineFormSet):
    def clean(self):
        """One variant per language tag, tags compared ignoring case (`fr-CA` and `fr-ca` are one)."""
        super().clean()
        kept = [f for f in self.forms if f.cleaned_data.get("locale") and not self._should_delete_form(f)]
        for form, problem in zip(kept, variant_locale_duplicates(locales=[f.cleaned_data["locale"] for f in kept])):
            if problem:
                form.add_error("locale", problem)


class VariantInline(admin.StackedInline):
    model = TemplateVariant
    form = VariantForm
    formset = VariantFormSet
    extra = 0


class PreviewForm(forms.Form):
    customer = forms.CharField(required=False, help_text="user id, email or #number; empty: a sample profile "
                                                         "(or the latest customer, for those who may view customers)")
    event = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False,
                            help_text='sample event JSON, e.g. {"name": "Checkout Started", "properties": {"total": 120}}')
    journey = forms.CharField(required=False, help_text="journey variables JSON")
    locale = forms.CharField(required=False, max_length=35,
                             help_text="e.g. fr or pt-BR: the variant customers with this locale get "
                                       "(empty: the customer's locale)")

    def _json(self, field):
        raw = self.cleaned_data.get(field) or ""
        try:
            value = json_read_storable(raw, field=field) if raw.strip() else {}
        except JourneyError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def clean_event(self):
        event = self._json("event")
        if "event" in event and "name" not in event:
            event["name"] = event["event"]
        event.setdefault("properties", {})
        return event

    def clean_journey(self):
        return self._json("journey")


@admin.register(MessageTemplate)
class MessageTemplateAdmin(InUseDeleteMixin, StalePageMixin, HistoryReasonMixin, SimpleHistoryAdmin):
    in_use_as = "template"
    form = TemplateForm
    inlines = (VariantInline,)
    list_display = ("name", "channel_kind", "topic", "subject", "preview_link")
    list_filter = ("channel_kind", "topic")
    search_fields = ("name", "subject", "body")

    history_restore_deleted = True  # people who may add templates restore a deleted one from its history

    def page_token(self, obj) -> str:
        return template_token(template=obj)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        current = self.get_object(request, object_id)
        if request.method == "GET" and (self._may_restore(request) if current is None
                                        else not self.revert_disabled(request, current)):
            messages.warning(request, template_restore_scope(template_id=object_id))
        return super().history_form_view(request, object_id, version_id, extra_context)

    def save_model(self, request, obj, form, change):
        template_save(template=obj, actor=request.user, reason=self._reason(request, form), loaded=self.loaded(form))

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        for each in (form, *(f for formset in formsets for f in formset.forms)):
            for warning in getattr(each, "warnings", ()):
                self.message_user(request, warning, messages.WARNING)

    def get_urls(self):
        return [path("<int:pk>/preview/", self.admin_site.admin_view(self.preview_view),
                     name="channels_app_messagetemplate_preview"), *super().get_urls()]

    @admin.display(description="preview")
    def preview_link(self, obj):
        return format_html('<a href="{}">preview</a>', reverse("admin:channels_app_messagetemplate_preview", args=[obj.pk]))

    def preview_view(self, request, pk):
        """Thin: the channels app's template_preview decides what may be shown (the same service and
        permission rule as the console's step-form preview)."""
        template = get_object_or_404(MessageTemplate, pk=pk)
        if not self.has_view_permission(request, template):
            return HttpResponse(status=403)
        form = PreviewForm(request.POST or None)
        rendered, status = None, 200
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            result = template_preview(user=request.user, template=template, customer_ref=data["customer"],
                                      event=data["event"], journey=data["journey"], locale=data["locale"])
            if result["ok"]:
                rendered = result
            else:
                status = result.get("status", 400)
                form.add_error(result["field"] if result["field"] in form.fields else None, result["error"])
        return TemplateResponse(request, "channels_app/template_preview.html", {
            **self.admin_site.each_context(request), "template": template, "form": form, "rendered": rendered,
            "title": f"Preview {template.name}", "opts": self.model._meta,
        }, status=status)


class ContentBlockForm(forms.ModelForm):
    class Meta:
        model = ContentBlock
        fields = ("name", "description", "variants")

    def clean_variants(self):
        from journeys.rules import RuleSyntaxError, compile_rule

        variants = self.cleaned_data.get("variants") or []
        if not isinstance(variants, list):
            raise forms.ValidationError('a list of {"rule": ..., "body": ...}')
        for i, variant in enumerate(variants, 1):
            if not isinstance(variant, dict) or "body" not in variant:
                raise forms.ValidationError(f"variant {i}: needs a body (and optionally a rule)")
            if variant.get("rule"):
                try:
                    compile_rule(variant["rule"])
                except RuleSyntaxError as exc:
                    raise forms.ValidationError(f"variant {i}: rule error: {exc}") from None
            if error := template_check(text=variant["body"]):
                raise forms.ValidationError(f"variant {i}: template error: {error}")
        return variants

    def clean(self):
        data = super().clean()
        if data.get("name") and isinstance(data.get("variants"), list):
            if problem := content_block_cycle(name=data["name"], variants=data["variants"]):
                self.add_error("variants", f"this block cannot be saved: {problem}")
        return data


@admin.register(ContentBlock)
class ContentBlockAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = ContentBlockForm
    list_display = ("name", "description")
