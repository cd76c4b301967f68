"""The transparent offline scorer, and that a better model can replace it through settings."""

from __future__ import annotations

import pytest

from agents.scoring import LexiconScorer, TextScores, _scorer, get_scorer


@pytest.fixture(scope="module")
def scorer():
    return LexiconScorer()


def test_angry_words_score_negative_and_kind_words_positive(scorer):
    assert scorer.score("This is the worst service ever, I am furious!").sentiment < -0.5
    assert scorer.score("Thank you so much, great help!").sentiment > 0.5


def test_complexity_is_made_of_visible_features(scorer):
    simple = scorer.score("Where is my parcel?")
    tangled = scorer.score(
        "My API token fails with a timeout error after the firmware update. Also the webhook sync does not work. "
        "How do I fix the SSO configuration? And why is the export broken?")
    assert simple.complexity < 0.2 < 0.45 < tangled.complexity
    assert {"api", "webhook", "sso"} <= set(tangled.features["technical_terms"])
    assert tangled.features["questions"] == 2 and tangled.features["multi_issue_markers"] >= 1
    assert set(tangled.features["complexity_parts"]) == {"length", "questions", "technical_terms", "multi_issue", "intents"}


@pytest.mark.parametrize("text,intent", [
    ("I want my money back", "refund"),
    ("Please cancel my subscription", "cancel"),
    ("Why was I charged twice on my invoice?", "billing"),
    ("My parcel did not arrive", "delivery"),
    ("I can't log in, password reset fails", "account"),
    ("The app shows an error and crashes", "technical"),
    ("What are your opening hours?", "question"),
])
def test_intent_comes_from_keyword_rules(scorer, text, intent):
    assert scorer.score(text).intent == intent


def test_empty_text_is_neutral(scorer):
    assert scorer.score("") == TextScores(sentiment=0.0, complexity=0.0, intent="question", features={"empty": True})


class AlwaysFurious:
    """A stand-in 'better model': anything with score(text) -> TextScores fits the interface."""

    def score(self, text: str) -> TextScores:
        return TextScores(sentiment=-1.0, complexity=1.0, intent="complaint", features={"model": "test"})


def test_the_scorer_is_replaceable_through_settings(settings):
    settings.AGENTS_SCORER = "tests.agents.test_scoring.AlwaysFurious"
    _scorer.cache_clear()
    try:
        assert get_scorer().score("lovely").sentiment == -1.0
    finally:
        _scorer.cache_clear()
