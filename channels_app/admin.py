from django.contrib import admin
from django.core.exceptions import ValidationError
from django import forms
from simple_history.admin import SimpleHistoryAdmin

from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services import template_check


@admin.register(Channel)
class ChannelAdmin(SimpleHistoryAdmin):
    list_display = ("name", "kind", "provider", "enabled", "fallback")
    list_filter = ("kind", "enabled")


class TemplateForm(forms.ModelForm):
    class Meta:
        model = MessageTemplate
        fields = ("name", "subject", "body")

    def clean(self):
        data = super().clean()
        for field in ("subject", "body"):
            if error := template_check(text=data.get(field) or ""):
                self.add_error(field, f"template error: {error}")
        return data


@admin.register(MessageTemplate)
class MessageTemplateAdmin(SimpleHistoryAdmin):
    form = TemplateForm
    list_display = ("name", "subject")
    search_fields = ("name", "subject", "body")


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "customer", "channel", "to", "subject", "status")
    list_filter = ("status", "channel")
    list_select_related = ("customer", "channel")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False
