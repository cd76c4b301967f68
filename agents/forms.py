"""Console forms: they parse input only; the services decide."""

from __future__ import annotations

import uuid

from django import forms

from agents.choices import AgentStatus, ResolutionCode


def _text_messages(what: str) -> dict[str, str]:
    """What the console says about a reply or note it cannot take, as the view shows it."""
    return {"required": f"Write a {what} first.",
            "max_length": f"A {what} can be at most %(limit_value)d characters; this one has %(show_value)d. "
                          "Shorten it (or split it) and send again."}


class ReplyForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 5, "id": "reply-body"}), max_length=5000,
                           error_messages=_text_messages("reply"))
    # One key per rendered form: a double click or a resent POST sends once.
    nonce = forms.CharField(widget=forms.HiddenInput, max_length=64, initial=lambda: uuid.uuid4().hex,
                            error_messages={"required": "This form is out of date: reload the case and send again.",
                                            "max_length": "This form is out of date: reload the case and send again."})


class NoteForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000,
                           error_messages=_text_messages("note"))


class ResolveForm(forms.Form):
    code = forms.ChoiceField(choices=ResolutionCode.choices, label="Resolution",
                             error_messages={"required": "Pick a resolution code.",
                                             "invalid_choice": "Pick a resolution code: %(value)s is not one."})
    note = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(attrs={"placeholder": "note (optional)"}),
                           error_messages={"max_length": "A resolution note can be at most %(limit_value)d characters; "
                                                         "this one has %(show_value)d. Shorten it and resolve again "
                                                         "(a longer text fits in a note on the case)."})


class FollowUpForm(forms.Form):
    workflow = forms.ModelChoiceField(queryset=None, empty_label=None,
                                      error_messages={"required": "Pick a live workflow.",
                                                      "invalid_choice": "Pick a live workflow: that one is not live "
                                                                        "(any more)."})

    def __init__(self, *args, workflows=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workflow"].queryset = workflows


class StatusForm(forms.Form):
    status = forms.ChoiceField(choices=AgentStatus.choices, error_messages={
        "required": "Pick a status: " + ", ".join(label for _, label in AgentStatus.choices) + ".",
        "invalid_choice": "%(value)s is not a status: pick " + ", ".join(label for _, label in AgentStatus.choices) + "."})
