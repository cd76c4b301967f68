"""The form of the experiment_split step kind, registered with its executor in experiments/steps.py."""

from __future__ import annotations

from django import forms

from experiments.models import Experiment
from journeys.forms.steps import StepConfigForm


class ExperimentSplitForm(StepConfigForm):
    kind = "experiment_split"
    config_fields = ("experiment", "arms", "holdout")
    experiment = forms.ChoiceField(help_text="each customer is assigned an arm once and follows its name")
    arms = forms.CharField(required=False, help_text="comma-separated arm names this step offers "
                                                     "(empty: all arms of the experiment)")
    holdout = forms.ChoiceField(required=False, choices=[("", "as the experiment says"), ("yes", "yes"),
                                                         ("no", "no")],
                                help_text="add a 'holdout' outcome for holdout customers (who get no messages)")

    def setup(self):
        rows = list(Experiment.objects.prefetch_related("arms").order_by("key"))
        self.fields["experiment"].choices = [("", "-")] + [
            (e.key, f"{e.key} (arms: {', '.join(a.name for a in e.arms.all())})") for e in rows]

    def initial_from(self, config):
        holdout = config.get("holdout")
        return {"experiment": config.get("experiment", ""), "arms": ", ".join(config.get("arms") or []),
                "holdout": "" if holdout is None else ("yes" if holdout else "no")}

    def to_config(self, data):
        config = {"experiment": data.get("experiment", "")}
        arms = [a.strip() for a in (data.get("arms") or "").split(",") if a.strip()]
        if arms:
            config["arms"] = arms
        if data.get("holdout"):
            config["holdout"] = data["holdout"] == "yes"
        return config
