"""How upset and how complex a customer's message is: an interface and a transparent offline scorer.

`LexiconScorer` uses VADER's bundled lexicon (no download at run time) for
sentiment, and a handful of visible features for complexity and intent, so an
ops person can see *why* a case escalated. A better model can replace it by
naming a class with the same `score()` in settings.AGENTS_SCORER.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from agents.choices import Intent


@dataclass(frozen=True)
class TextScores:
    sentiment: float  # -1 (very negative) .. 1 (very positive)
    complexity: float  # 0 (one simple question) .. 1 (several tangled technical issues)
    intent: str  # an agents.choices.Intent value
    features: dict = field(default_factory=dict)  # what the numbers are made of, shown to agents


class TextScorer(Protocol):
    def score(self, text: str) -> TextScores: ...


# Keyword rules for intent, first match wins; order = priority when several match.
INTENT_KEYWORDS: list[tuple[str, tuple[str, ...]]] = [
    (Intent.REFUND, ("refund", "money back", "reimburse", "chargeback")),
    (Intent.CANCEL, ("cancel", "unsubscribe", "close my account", "terminate")),
    (Intent.BILLING, ("invoice", "charged", "charge", "billing", "payment", "price", "bill")),
    (Intent.DELIVERY, ("delivery", "shipping", "shipped", "package", "parcel", "tracking", "arrive", "courier")),
    (Intent.ACCOUNT, ("password", "login", "log in", "sign in", "locked out", "2fa", "account access")),
    (Intent.TECHNICAL, ("error", "bug", "crash", "broken", "not working", "doesn't work", "does not work", "fails", "install")),
    (Intent.COMPLAINT, ("complaint", "unacceptable", "terrible", "worst", "disappointed", "angry")),
]

TECHNICAL_TERMS = (
    "api", "error", "code", "integration", "sync", "firmware", "update", "install", "configuration", "config",
    "server", "timeout", "database", "export", "import", "webhook", "sso", "token", "version", "crash",
)
MULTI_ISSUE_MARKERS = ("also", "another", "additionally", "second", "on top of", "as well", "besides")

# Complexity = weighted sum of capped features, each in 0..1 (weights sum to 1).
COMPLEXITY_WEIGHTS = {"length": 0.3, "questions": 0.15, "technical_terms": 0.25, "multi_issue": 0.2, "intents": 0.1}


class LexiconScorer:
    """VADER compound sentiment + feature-based complexity + keyword intent."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()  # reads the lexicon shipped inside the package

    def score(self, text: str) -> TextScores:
        text = (text or "").strip()
        if not text:
            return TextScores(sentiment=0.0, complexity=0.0, intent=str(Intent.QUESTION), features={"empty": True})
        lower = text.lower()
        words = re.findall(r"[\w']+", lower)
        intents = [name for name, keys in INTENT_KEYWORDS if any(_has(lower, k) for k in keys)]
        technical = sorted({w for w in words if w in TECHNICAL_TERMS})
        multi = sum(1 for m in MULTI_ISSUE_MARKERS if _has(lower, m))
        questions = text.count("?")
        parts = {
            "length": min(len(words) / 120, 1.0),
            "questions": min(questions / 3, 1.0),
            "technical_terms": min(len(technical) / 4, 1.0),
            "multi_issue": min(multi / 2, 1.0),
            "intents": min(max(len(intents) - 1, 0) / 2, 1.0),
        }
        complexity = round(sum(COMPLEXITY_WEIGHTS[k] * v for k, v in parts.items()), 3)
        sentiment = round(self._vader.polarity_scores(text)["compound"], 3)
        return TextScores(
            sentiment=sentiment,
            complexity=complexity,
            intent=str(intents[0]) if intents else str(Intent.QUESTION),
            features={
                "words": len(words), "questions": questions, "technical_terms": technical,
                "multi_issue_markers": multi, "intents": [str(i) for i in intents],
                "complexity_parts": {k: round(v, 3) for k, v in parts.items()},
            },
        )


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


@lru_cache(maxsize=1)
def _scorer(path: str) -> TextScorer:
    return import_string(path)()


def get_scorer() -> TextScorer:
    """The configured scorer (settings.AGENTS_SCORER, a dotted class path), built once per process."""
    return _scorer(getattr(settings, "AGENTS_SCORER", "agents.scoring.LexiconScorer"))
