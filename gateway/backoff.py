"""Exponential backoff with jitter, so that many devices (or gateways) that lost
their peer at the same moment do not all retry in step."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first: float = 0.5, cap: float = 30.0, factor: float = 2.0) -> None:
        self.first, self.cap, self.factor = first, cap, factor
        self.attempt = 0

    def next(self) -> float:
        """The delay before the next attempt: uniform in [base/2, base]."""
        base = min(self.cap, self.first * self.factor**self.attempt)
        self.attempt += 1
        return base * (0.5 + random.random() / 2)

    def reset(self) -> None:
        self.attempt = 0
