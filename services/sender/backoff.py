"""Per-destination backoff: which failures count, and how long to wait after one.

Behaviour (spec/behaviours.md §1.3, after Synapse): connection errors,
timeouts, 5xx, 401 and 429 count as failures; the first failure waits
``min_interval``, each further one ``interval × 2 × U(0.8, 1.4)``, never
below ``min_interval`` nor above ``max_interval``. A 429 waits what the
remote asked for (``Retry-After`` / ``retry_after_ms``) when it said. Any
other 4xx is not a failure of the destination: it refused that transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mxfed.federation_client import HttpResponseError


@dataclass(frozen=True)
class BackoffPolicy:
    min_interval_ms: int
    max_interval_ms: int

    def next_interval(self, current_ms: int, rng: random.Random | None = None) -> int:
        """The wait after one more failure, given the current interval (0: none yet).

        ``SenderStorage.record_transaction_failure`` applies the same rule in
        the database (with a :meth:`growth` drawn here) to save a round trip.
        """
        if current_ms <= 0:
            return self.min_interval_ms
        factor = self.growth(rng)
        return int(min(max(current_ms * factor, self.min_interval_ms), self.max_interval_ms))

    @staticmethod
    def growth(rng: random.Random | None = None) -> float:
        """The factor an interval grows by after a further failure (jittered)."""
        return 2 * (rng or random).uniform(0.8, 1.4)


def counts_as_failure(error: Exception) -> bool:
    """Does ``error`` say the destination is down (back off) rather than "no"?"""
    if isinstance(error, HttpResponseError):
        return error.status >= 500 or error.status in (401, 429)
    # Unreachable, timeouts, TLS failures, garbage answers, a blocked address:
    # anything but an explicit answer means "try again later", with backoff.
    return True


def retry_after_ms(error: Exception) -> int | None:
    """How long the destination asked us to wait (429 only)."""
    if isinstance(error, HttpResponseError) and error.status == 429:
        return error.retry_after_ms
    return None
