"""Console forms: they parse input only; the services decide."""

from __future__ import annotations

import uuid

from django import forms

from agents.choices import AgentStatus, ResolutionCode


def _text_messages(what: str, again: str = "send again") -> dict[str, str]:
    """What the console says about a reply or note it cannot take, as the view shows it."""
    return {"required": f"Write a {what} first.",
            "max_length": f"A {what} can be at most %(limit_value)d characters; this one has %(show_value)d. "
                          "Shorten it (or split it) and send again.",
            "null_characters_not_allowed": _null_characters(f"The {what}", again)}


def _null_characters(what: str, again: str = "send again") -> str:
    """Django's own "Null characters are not allowed." does not say which field: this does."""
    return f"{what} cannot contain null characters (\\0): remove them and {again}."


class ReplyForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 5, "id": "reply-body"}), max_length=5000,
                           error_messages=_text_messages("reply"))
    # One key per rendered form: a double click or a resent POST sends once.
    nonce = forms.CharField(widget=forms.HiddenInput, max_length=64, initial=lambda: uuid.uuid4().hex,
                            error_messages=dict.fromkeys(("required", "max_length", "null_characters_not_allowed"),
                                                         "This form is out of date: reload the case and send again."))


class NoteForm(forms.Form):
    body = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000,
                           error_messages=_text_messages("note", "add it again"))


class ResolveForm(forms.Form):
    code = forms.ChoiceField(choices=ResolutionCode.choices, label="Resolution",
                             error_messages={"required": "Pick a resolution code.",
                                             "invalid_choice": "Pick a resolution code: %(value)s is not one."})
    note = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(attrs={"placeholder": "note (optional)"}),
                           error_messages={"max_length": "A resolution note can be at most %(limit_value)d characters; "
                                                         "this one has %(show_value)d. Shorten it and resolve again "
                                                         "(a longer text fits in a note on the case).",
                                           "null_characters_not_allowed": _null_characters("The resolution note", "resolve again")})


class FollowUpForm(forms.Form):
    workflow = forms.ModelChoiceField(queryset=None, empty_label=None,
                                      error_messages={"required": "Pick a live workflow.",
                                                      "invalid_choice": "Pick a live workflow: that one is not live "
                                                                        "(any more)."})

    def __init__(self, *args, workflows=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workflow"].queryset = workflows


class TransferForm(forms.Form):
    """Where to: a team's queue or a colleague, among the targets the console offered
    (selectors.transfer_targets); `to` cleans to the Team or Agent."""

    to = forms.ChoiceField(label="Transfer to", error_messages={
        "required": "Pick a queue or a colleague to transfer the case to.",
        "invalid_choice": "Pick a queue or a colleague from the list: %(value)s is not one (any more)."})

    def __init__(self, *args, targets=None, **kwargs):
        super().__init__(*args, **kwargs)
        targets = targets or {}
        self._targets = {t.value: t.target for group in targets.values() for t in group}
        self.fields["to"].choices = [("", "---------")] + [
            (group, [(t.value, t.label) for t in options]) for group, options in targets.items() if options]

    def clean_to(self):
        return self._targets[self.cleaned_data["to"]]


class StatusForm(forms.Form):
    status = forms.ChoiceField(choices=AgentStatus.choices, error_messages={
        "required": "Pick a status: " + ", ".join(label for _, label in AgentStatus.choices) + ".",
        "invalid_choice": "%(value)s is not a status: pick " + ", ".join(label for _, label in AgentStatus.choices) + "."})
