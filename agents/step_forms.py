"""The form of the escalate_to_agent step kind, registered with its executor in agents/steps.py."""

from __future__ import annotations

from django import forms

from agents.models import Team
from journeys.forms.fields import DurationField, NamesInput, event_names
from journeys.forms.steps import StepConfigForm


class EscalateToAgentForm(StepConfigForm):
    kind = "escalate_to_agent"
    durations = ("failed_window",)
    config_fields = ("sentiment_below", "complexity_above", "value_at_least", "failed_attempts_at_least",
                     "failed_event", "failed_window", "always", "category", "team", "priority", "text_property",
                     "sentiment_property")
    sentiment_below = forms.FloatField(required=False, min_value=-1, max_value=1,
                                       help_text="escalate when the message's sentiment is at or below this "
                                                 "(-1 angry .. 1 happy), e.g. -0.3")
    complexity_above = forms.FloatField(required=False, min_value=0, max_value=1,
                                        help_text="escalate when complexity is at or above this (0 .. 1), e.g. 0.5")
    value_at_least = forms.FloatField(required=False, min_value=0,
                                      help_text="escalate when profile.ltv is at least this, e.g. 1000")
    failed_attempts_at_least = forms.IntegerField(required=False, min_value=1,
                                                  help_text="escalate after this many failed automated attempts")
    failed_event = forms.CharField(required=False, help_text="event counted as a failed attempt, e.g. Bot Fallback")
    failed_window = DurationField(required=False, help_text="how far back failed events count (default 24h)")
    always = forms.BooleanField(required=False, help_text="escalate every customer who reaches this step")
    category = forms.CharField(required=False, help_text="the case's product category (default: "
                                                         "event.properties.category, else general)")
    team = forms.ChoiceField(required=False, help_text="route to this team (default: by category)")
    priority = forms.ChoiceField(choices=[(p, p) for p in ("low", "normal", "high", "urgent")], initial="normal")
    text_property = forms.CharField(required=False, help_text="event property with the customer's words "
                                                              "(default: text, message, body)")
    sentiment_property = forms.CharField(required=False, help_text="event property with an upstream sentiment "
                                                                   "score -1..1 (default: sentiment)")

    def setup(self):
        self.fields["team"].choices = [("", "(by category)"), *((slug, f"{slug} ({name})" if name else slug)
                                                                for slug, name in Team.objects.order_by("slug")
                                                                .values_list("slug", "name"))]
        self.fields["failed_event"].widget = NamesInput(event_names())
