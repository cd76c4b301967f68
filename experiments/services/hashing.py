"""Deterministic positions in [0, 1): what assignment (and the bandit's seeded sampling) build on.

On its own so that assignment and bandits both depend on it and not on each other
(the bandit seeds its draws with the same hash as assignment).
"""

from __future__ import annotations

import hashlib


def hash_unit(*parts: object) -> float:
    """A uniform number in [0, 1) from the parts (first 8 bytes of SHA-256)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
