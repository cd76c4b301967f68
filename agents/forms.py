"""Console forms: they parse input only; the services decide."""

from __future__ import annotations

import uuid

from django import forms

from agents.choices import AgentStatus, ResolutionCode


class ReplyForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 5, "id": "reply-body"}), max_length=5000)
    # One key per rendered form: a double click or a resent POST sends once.
    nonce = forms.CharField(widget=forms.HiddenInput, max_length=64, initial=lambda: uuid.uuid4().hex)


class NoteForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000)


class ResolveForm(forms.Form):
    code = forms.ChoiceField(choices=ResolutionCode.choices, label="Resolution")
    note = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(attrs={"placeholder": "note (optional)"}))


class FollowUpForm(forms.Form):
    workflow = forms.ModelChoiceField(queryset=None, empty_label=None)

    def __init__(self, *args, workflows=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workflow"].queryset = workflows


class StatusForm(forms.Form):
    status = forms.ChoiceField(choices=AgentStatus.choices)
