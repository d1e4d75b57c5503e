"""A fetched batch written while the keys service still verifies its signatures.

A big fetched batch (a send_join answer, a partial-state resync's /state)
takes longer to verify (step 2 of the checks on receipt,
https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu)
than its storage takes to prepare. :func:`store_while_verifying` writes it in
a transaction committed only once every signature has verified, and rolls it
back when one has not: the caller then stores it again without the refused
PDUs, so the outcome is the one checking every signature first gives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

import asyncpg

from services.events.pdu_checks import CheckedPdu, PendingChecks
from services.events.room_batch import RoomBatch

log = logging.getLogger(__name__)

T = TypeVar("T")


async def store_while_verifying(
    pool: asyncpg.Pool,
    pending: PendingChecks,
    written: Collection[CheckedPdu],
    write: Callable[[asyncpg.Connection], Awaitable[tuple[RoomBatch | None, T]]],
    *,
    what: str,
    room_id: str,
) -> tuple[bool, T | None]:
    """``write`` run in a transaction, committed once ``pending`` has verified.

    ``what`` names the batch in the log ("send_join answer").

    ``written``: the PDUs of ``pending`` that ``write`` stores; one of them
    refused → rolled back, ``(False, None)``: the caller stores the batch
    again without what was refused. ``write`` gives the batch it wrote (None:
    nothing to write, rolled back without waiting for the signatures) and a
    result, handed back with True once committed. A failure of ``write``
    counts only if it was the batch as signed: with a refused PDU it is
    ``(False, None)`` too.
    """
    try:
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                batch, result = await write(conn)
                if batch is None:
                    await transaction.rollback()
                    return True, result
                await pending.verified()
                refused = sum(c.refusal is not None for c in written)
                if refused:
                    log.info(
                        what + " with refused signatures; storing it again without them",
                        extra={"room_id": room_id, "refused": refused},
                    )
                    await transaction.rollback()
                    return False, None
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
        await batch.committed()
    except Exception:
        await pending.verified()
        if not any(c.refusal is not None for c in written):
            raise
        return False, None
    return True, result
