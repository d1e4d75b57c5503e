"""Per-destination backoff: which answers drop a transaction, and how long to wait otherwise.

A transaction is dropped only when the remote homeserver definitively
refused *that transaction*: 400 ``M_BAD_JSON`` / ``M_NOT_JSON`` or 413
``M_TOO_LARGE`` (a Matrix error body saying the request itself is wrong).
Resending the same txn id with the same contents would be refused forever
and hold up the destination's queue. Every other outcome — no connection,
timeouts, TLS failures, 5xx, 401, 403, 404 (a reverse proxy in front of a
server being restarted or moved answers 404 for a while, as Synapse also
assumes), 429, any answer without a Matrix error body — means "not now":
the transaction stays queued, unchanged, and is retried with backoff.

Backoff (https://spec.matrix.org/v1.19/server-server-api/#transactions
leaves it to the sender; after Synapse): the first failure waits
``min_interval``, each further one ``interval × 2 × U(0.8, 1.4)``, never
below ``min_interval`` nor above ``max_interval``. A 429 waits what the
remote asked for (``Retry-After`` / ``retry_after_ms``) when it said.
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


# (status, errcode) pairs with which a homeserver refuses a request for what it holds.
TRANSACTION_REFUSALS = frozenset(
    {(400, "M_BAD_JSON"), (400, "M_NOT_JSON"), (413, "M_TOO_LARGE"), (400, "M_TOO_LARGE")}
)


def refuses_the_transaction(error: Exception) -> bool:
    """Did the destination definitively refuse this transaction (drop it), rather than
    fail for now (back off and retry the same transaction)?"""
    return (
        isinstance(error, HttpResponseError)
        and (error.status, error.errcode) in TRANSACTION_REFUSALS
    )


def retry_after_ms(error: Exception) -> int | None:
    """How long the destination asked us to wait (429 only)."""
    if isinstance(error, HttpResponseError) and error.status == 429:
        return error.retry_after_ms
    return None
