"""Limits of a federation transaction (``PUT /_matrix/federation/v1/send/{txnId}``).

Spec: https://spec.matrix.org/v1.19/server-server-api/#transactions
"""

from __future__ import annotations

MAX_PDUS = 50
"""At most this many PDUs in one transaction."""

MAX_EDUS = 100
"""At most this many EDUs in one transaction."""
