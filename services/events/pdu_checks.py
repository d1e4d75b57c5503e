"""Steps 1–3 of the checks on receipt of a PDU, shared by every input path.

Spec: https://spec.matrix.org/v1.19/server-server-api/#checks-performed-on-receipt-of-a-pdu
1. a valid PDU (format, size, limits) → else dropped; 2. valid signatures →
else dropped; 3. the content hash → else the event continues redacted.

Used by /send transactions and fetched batches (:mod:`services.events.input`),
the state and auth chain of a send_join answer, membership events and
invites other servers send us, and countersignatures (:mod:`.membership`,
:mod:`.third_party`). Signatures are always checked in ONE
``VerifyJsonSignatures`` call per batch (the keys service verifies them in
bulk) — except fetched batches past :data:`VERIFY_CHUNK` PDUs (a room's
state), whose chunks are verified by the keys service while this process
checks the chunk's content hashes and the next chunk's format. Steps 4–6
(auth, soft failure) belong to :class:`~services.events.room_batch.RoomBatch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from matrix_protocol.canonical_json import encode_json
from matrix_protocol.event_ids import compute_event_id, event_id_of_reference_json
from matrix_protocol.events import Event
from matrix_protocol.hashes import content_hash_matches, reference_json
from matrix_protocol.pdu_format import PduFormatError, check_pdu_format
from matrix_protocol.policy_servers import PolicyServer
from matrix_protocol.redaction import redact
from matrix_protocol.room_versions import EventFormat, RoomVersion
from matrix_protocol.signing import signatures_required_for_event
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from services.events.outcomes import Outcome, Reason

# Fetched batches bigger than this are verified in chunks of it, overlapping the format checks.
VERIFY_CHUNK = 1000

# Times a named stage of the checks ("signatures", "hashes"), e.g. StageClock.stage.
Stage = Callable[[str], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def untimed(_: str) -> AsyncIterator[None]:
    yield


@dataclass
class CheckedPdu:
    """A PDU past the format check, on its way through steps 2 and 3 and into a room batch.

    ``pdu`` is what gets stored: without ``unsigned`` (covered by neither
    hashes nor signatures), redacted when its content hash does not match
    (``redacted``). ``refusal`` is set once a check drops it.
    """

    event: Event
    pdu: dict[str, Any]
    redacted: bool = False
    refusal: Reason | None = None
    error: str = ""
    # The policy server whose valid signature it was found to carry (or got)
    # before its batch: the batch need not verify it again.
    policy_signed_by: PolicyServer | None = None
    # Step 1 validated it as canonical JSON (room v6+): step 3 need not again.
    canonical: bool = False
    # What its signatures cover (its reference JSON), encoded at step 1 for
    # the event id and handed to step 2 (then dropped).
    signed_json: bytes | None = None

    def refuse(self, reason: Reason, error: str) -> None:
        """Drop it for ``reason`` (the first reason found is kept)."""
        if self.refusal is None:
            self.refusal, self.error = reason, error

    def outcome(self) -> Outcome:
        """The outcome of a refused PDU."""
        assert self.refusal is not None
        return Outcome.refused(self.event.event_id, self.refusal, self.error)

    @classmethod
    def built_here(cls, event: Event, pdu: dict[str, Any]) -> CheckedPdu:
        """An event this server built and signed: nothing to check."""
        return cls(event, pdu)


def without_unsigned(pdu: Mapping[str, Any]) -> dict[str, Any]:
    """NOTSPEC: ``unsigned`` is not stored (Synapse keeps only ``age``)."""
    return {key: value for key, value in pdu.items() if key != "unsigned"}


def check_format(pdu: Any, version: RoomVersion, *, history: bool = False) -> CheckedPdu | Outcome:
    """Step 1: the PDU, or why it is dropped (``event_id`` "" when none can be computed).

    ``history``: fetched history (backfill, gap filling) may exceed the 20
    prev / 10 auth events limits; size limits still apply.
    """
    canonical = version.strict_canonical_json
    try:
        check_pdu_format(pdu, version, backfilled=history)
        stored = without_unsigned(pdu)
        signed_json = reference_json(stored, version, validated=canonical)
        if version.event_format is EventFormat.V1:
            event_id = compute_event_id(stored, version)  # carried in the PDU
        else:
            event_id = event_id_of_reference_json(signed_json, version)
        event = Event(stored, version, event_id)
    except (PduFormatError, ValueError) as error:
        try:
            event_id = compute_event_id(pdu, version)
        except (ValueError, TypeError, KeyError, AttributeError):
            event_id = ""
        return Outcome.refused(event_id, Reason.INVALID_FORMAT, f"invalid PDU: {error}")
    return CheckedPdu(event, stored, canonical=canonical, signed_json=signed_json)


def _signature_items(
    checks: Sequence[tuple[Event, Iterable[str]]], signed: Sequence[bytes | None] = ()
) -> tuple[list[keys_pb2.JsonToVerify], list[int]]:
    """The VerifyJsonSignatures items for ``checks``, and the index of the check each is for.

    ``signed``: per check, the bytes its signatures cover when known (step 1
    encoded them), sent instead of the redacted JSON.
    """
    items: list[keys_pb2.JsonToVerify] = []
    owners: list[int] = []
    for index, (event, servers) in enumerate(checks):
        signed_json = signed[index] if index < len(signed) else None
        redacted_json = b"" if signed_json else encode_json(redact(event.pdu, event.room_version))
        for server in sorted(set(servers)):
            item = keys_pb2.JsonToVerify(
                json=redacted_json,
                server_name=server,
                at_ts=event.origin_server_ts,
                enforce_key_validity=event.room_version.enforce_key_validity,
            )
            if signed_json:
                item.signed_json = signed_json
                by_key = event.pdu["signatures"].get(server)  # a map of maps (step 1)
                if by_key:
                    item.signatures.update(by_key)
            items.append(item)
            owners.append(index)
    return items, owners


async def _verify_items(
    keys: keys_pb2_grpc.KeysStub, count: int, items: list[keys_pb2.JsonToVerify], owners: list[int]
) -> list[str | None]:
    errors: list[str | None] = [None] * count
    if not items:
        return errors
    reply = await keys.VerifyJsonSignatures(keys_pb2.VerifyJsonSignaturesRequest(items=items))
    for owner, item, result in zip(owners, items, reply.results, strict=True):
        if not result.ok and errors[owner] is None:
            errors[owner] = f"signature of {item.server_name} does not verify: {result.error}"
    return errors


async def verify_signatures(
    keys: keys_pb2_grpc.KeysStub, checks: Sequence[tuple[Event, Iterable[str]]]
) -> list[str | None]:
    """The named servers' signatures of each event, in ONE call: an error (or None) per event."""
    items, owners = _signature_items(checks)
    return await _verify_items(keys, len(checks), items, owners)


def _start_signature_check(
    keys: keys_pb2_grpc.KeysStub, pdus: Sequence[CheckedPdu]
) -> asyncio.Task[None]:
    """Step 2 for the PDUs not refused yet, as a task; failures are refused when it ends.

    The request is built before this returns, from the PDUs as they are now:
    step 3 may then redact them while the keys service verifies (a redacted
    copy has the same redacted form, which is what the signatures cover).
    """
    owners: list[CheckedPdu] = []
    checks: list[tuple[Event, Iterable[str]]] = []
    signed: list[bytes | None] = []
    for checked in pdus:
        if checked.refusal is not None:
            continue
        try:
            servers = signatures_required_for_event(checked.event)
        except ValueError as error:
            checked.refuse(Reason.INVALID_FORMAT, f"invalid PDU: {error}")
            continue
        checks.append((checked.event, servers))
        owners.append(checked)
        signed.append(checked.signed_json)
        checked.signed_json = None
    items, item_owners = _signature_items(checks, signed)

    async def verified() -> None:
        failures = await _verify_items(keys, len(checks), items, item_owners)
        for owner, failure in zip(owners, failures, strict=True):
            if failure is not None:
                owner.refuse(Reason.INVALID_SIGNATURE, failure)

    return asyncio.create_task(verified())


async def check_signatures(keys: keys_pb2_grpc.KeysStub, pdus: Sequence[CheckedPdu]) -> None:
    """Step 2 for the PDUs not refused yet, in one call; failures are refused."""
    await _start_signature_check(keys, pdus)


async def check_signatures_and_hashes(
    keys: keys_pb2_grpc.KeysStub, pdus: Sequence[CheckedPdu], stage: Stage = untimed
) -> None:
    """Steps 2 and 3: one VerifyJsonSignatures call for all, then the content hashes."""
    async with stage("signatures"):
        await check_signatures(keys, pdus)
    async with stage("hashes"):
        check_content_hashes(pdus)


def check_content_hashes(pdus: Iterable[CheckedPdu]) -> None:
    """Step 3: a PDU whose content hash does not match continues redacted."""
    for checked in pdus:
        if checked.refusal is None and not content_hash_matches(
            checked.pdu, validated=checked.canonical
        ):
            version = checked.event.room_version
            checked.pdu = redact(checked.pdu, version)
            checked.event = Event(checked.pdu, version, checked.event.event_id)
            checked.redacted = True


@dataclass
class CheckedBatch:
    """PDUs of one room after steps 1–3: those to store (in the order given), and the
    outcomes the checks settled (dropped PDUs, copies of one given before)."""

    valid: list[CheckedPdu]
    settled: list[Outcome]
    # PDUs dropped at step 1, with an event id (in ``settled``) or without.
    malformed: int
    # The event id of each PDU given, in order ("" where none could be computed).
    event_ids: list[str] = field(default_factory=list)


@dataclass
class PendingChecks:
    """A fetched batch past steps 1 and 3, its signatures (step 2) still being verified.

    ``unverified``: the PDUs to store if every signature verifies, in the
    order given. A caller may prepare their storage meanwhile (inside a
    transaction it commits only after :meth:`verified`, and redoes without
    the refused PDUs if any is refused:
    :func:`~services.events.stored_while_verifying.store_while_verifying`).
    """

    unverified: list[CheckedPdu]
    settled: list[Outcome]
    malformed: int
    event_ids: list[str]
    verifying: list[asyncio.Task[None]]
    stage: Stage = untimed

    async def verified(self) -> CheckedBatch:
        """Once step 2 has ended: the batch without the PDUs it refused."""
        async with self.stage("signatures"):
            await asyncio.gather(*self.verifying)
        settled = [*self.settled, *(c.outcome() for c in self.unverified if c.refusal is not None)]
        valid = [c for c in self.unverified if c.refusal is None]
        return CheckedBatch(valid, settled, self.malformed, self.event_ids)

    def cancel(self) -> None:
        """Nobody will wait for :meth:`verified` (the caller failed meanwhile)."""
        for task in self.verifying:
            task.cancel()


async def check_fetched(
    keys: keys_pb2_grpc.KeysStub,
    pdus: Iterable[Any],
    version: RoomVersion,
    room_id: str,
    *,
    history: bool = False,
    stage: Stage = untimed,
) -> CheckedBatch:
    """Steps 1–3 for PDUs we fetched ourselves for ``room_id``.

    PDUs of other rooms are left out without an outcome; a PDU given twice
    is checked once (the copy is answered as a duplicate).
    """
    pending = await start_checks(keys, pdus, version, room_id, history=history, stage=stage)
    return await pending.verified()


async def start_checks(
    keys: keys_pb2_grpc.KeysStub,
    pdus: Iterable[Any],
    version: RoomVersion,
    room_id: str,
    *,
    history: bool = False,
    stage: Stage = untimed,
) -> PendingChecks:
    """:func:`check_fetched` up to the signatures, which the keys service verifies meanwhile.

    Each chunk of :data:`VERIFY_CHUNK` PDUs is sent to the keys service as
    soon as its format is checked; its content hashes are checked here while
    that service verifies it and the next chunk is format-checked.
    """
    valid: list[CheckedPdu] = []
    settled: list[Outcome] = []
    seen: set[str] = set()
    malformed = 0
    event_ids: list[str] = []
    verifying: list[asyncio.Task[None]] = []
    chunk_start = 0
    for pdu in pdus:
        if len(valid) - chunk_start >= VERIFY_CHUNK:
            chunk = valid[chunk_start:]
            chunk_start = len(valid)
            verifying.append(_start_signature_check(keys, chunk))
            await asyncio.sleep(0)  # the call goes out now
            check_content_hashes(chunk)
        checked = check_format(pdu, version, history=history)
        event_ids.append(
            checked.event_id if isinstance(checked, Outcome) else checked.event.event_id
        )
        if isinstance(checked, Outcome):
            malformed += 1
            if checked.event_id:
                settled.append(checked)
            continue
        if checked.event.room_id != room_id:
            continue
        if checked.event.event_id in seen:
            settled.append(Outcome.duplicate(checked.event.event_id))
            continue
        seen.add(checked.event.event_id)
        valid.append(checked)
    last = valid[chunk_start:]
    if last:
        verifying.append(_start_signature_check(keys, last))
        await asyncio.sleep(0)
        async with stage("hashes"):
            check_content_hashes(last)
    # Refused when their signature check was built (no usable servers): settled now.
    settled.extend(c.outcome() for c in valid if c.refusal is not None)
    unverified = [c for c in valid if c.refusal is None]
    return PendingChecks(unverified, settled, malformed, event_ids, verifying, stage)
