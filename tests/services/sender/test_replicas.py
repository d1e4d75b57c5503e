"""Several sender replicas: destinations split by leases, moved when one dies or joins."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from services.sender.leases import Membership, preferred_replica
from services.sender.storage import LeaseLost, SenderStorage
from tests.support.polling import wait_until
from tests.support.sender_queues import queue_pdus


async def lease_owners(storage: SenderStorage) -> dict[str, str | None]:
    rows = await storage.pool.fetch("SELECT destination, lease_owner FROM sender.destinations")
    return {r["destination"]: r["lease_owner"] for r in rows}


def test_rendezvous_hashing_moves_only_the_share_of_a_new_replica() -> None:
    destinations = [f"d{i}.example" for i in range(2000)]
    two = {d: preferred_replica(d, ["a", "b"]) for d in destinations}
    three = {d: preferred_replica(d, ["a", "b", "c"]) for d in destinations}
    moved = [d for d in destinations if two[d] != three[d]]
    assert all(three[d] == "c" for d in moved)
    assert 500 < len(moved) < 830  # about a third
    assert 850 < sum(1 for d in destinations if two[d] == "a") < 1150


async def test_a_dead_replicas_destinations_move_to_another(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receivers = [await receiver_factory() for _ in range(8)]
    for receiver in receivers:
        await receiver.go_down()
    names = [r.server_name for r in receivers]
    ids = await queue_pdus(sender_storage, names, 3)
    one = await replica_factory()
    two = await replica_factory()
    await wait_until(lambda: set(one.membership.replicas) == {one.instance_id, two.instance_id})

    async def both_hold_leases() -> bool:
        owners = await lease_owners(sender_storage)
        return set(owners.values()) == {one.instance_id, two.instance_id}

    held = False
    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        if held := await both_hold_leases():
            break
        await asyncio.sleep(0.1)
    assert held, await lease_owners(sender_storage)
    owners = await lease_owners(sender_storage)
    assert all(owners[d] == preferred_replica(d, sorted(owners.values())) for d in names)

    await one.crash()
    for receiver in receivers:
        await receiver.come_back()
    for receiver in receivers:
        await wait_until(lambda r=receiver: r.pdu_ids() == ids, timeout=60)
        assert len(receiver.pdu_ids()) == len(set(receiver.pdu_ids()))
    owners = await lease_owners(sender_storage)
    assert one.instance_id not in owners.values()


async def test_a_new_replica_takes_its_share(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receivers = [await receiver_factory() for _ in range(8)]
    for receiver in receivers:
        await receiver.go_down()
    await queue_pdus(sender_storage, [r.server_name for r in receivers], 1)
    one = await replica_factory()
    await wait_until(lambda: len(one.manager.workers) == 8)
    two = await replica_factory()
    replicas = sorted([one.instance_id, two.instance_id])

    def settled(owners: dict[str, str]) -> bool:
        # Rebalancing moves destinations one lease at a time: wait for all of them.
        expected = {d: preferred_replica(d, replicas) for d in owners}
        return (
            owners == expected
            and set(one.manager.workers) | set(two.manager.workers) == set(owners)
            and not set(one.manager.workers) & set(two.manager.workers)
        )

    # A generous bound: on a loaded machine rebalancing can take tens of seconds.
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        owners = await lease_owners(sender_storage)
        if settled(owners) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert owners == {d: preferred_replica(d, replicas) for d in owners}
    assert set(one.manager.workers) | set(two.manager.workers) == set(owners)
    assert not set(one.manager.workers) & set(two.manager.workers)


async def test_a_replica_without_the_lease_cannot_start_a_transaction(
    sender_storage: SenderStorage,
) -> None:
    await queue_pdus(sender_storage, ["x.example"], 2)
    assert await sender_storage.claim("a", ["x.example"], 30) == ["x.example"]
    assert await sender_storage.claim("b", ["x.example"], 30) == []
    try:
        await sender_storage.next_transaction("x.example", "b", max_pdus=50, max_edus=100)
    except LeaseLost:
        pass
    else:
        raise AssertionError("b started a transaction without the lease")
    txn = await sender_storage.next_transaction("x.example", "a", max_pdus=50, max_edus=100)
    assert txn is not None and len(txn.pdus) == 2
    # An expired lease can be taken over, and the new holder resends the same transaction.
    await sender_storage.pool.execute(
        "UPDATE sender.destinations SET lease_expires_at = now() - interval '1 second'"
    )
    assert await sender_storage.claim("b", ["x.example"], 30) == ["x.example"]
    again = await sender_storage.next_transaction("x.example", "b", max_pdus=50, max_edus=100)
    assert again.txn_id == txn.txn_id and again.pdus == txn.pdus and again.resumed
    try:
        await sender_storage.next_transaction("x.example", "a", max_pdus=50, max_edus=100)
    except LeaseLost:
        pass
    else:
        raise AssertionError("a kept sending after losing the lease")


async def test_a_restarted_replica_takes_its_leases_back_at_once(
    sender_storage: SenderStorage, receiver_factory, replica_factory, caplog
) -> None:
    """Leases last an hour here: only the restart under the same name can hand them over."""
    caplog.set_level(logging.INFO, logger="services.sender.leases")
    receivers = [await receiver_factory() for _ in range(4)]
    for receiver in receivers:
        await receiver.go_down()
    names = [r.server_name for r in receivers]
    ids = await queue_pdus(sender_storage, names, 2)
    before = await replica_factory(name="sender-a", lease_seconds=3600)
    await wait_until(lambda: len(before.manager.workers) == len(names))
    await before.crash()  # SIGKILL: nothing given back
    for receiver in receivers:
        await receiver.come_back()

    after = await replica_factory(name="sender-a", lease_seconds=3600)
    for receiver in receivers:
        await wait_until(lambda r=receiver: r.pdu_ids() == ids, timeout=60)
    owners = await lease_owners(sender_storage)
    assert before.instance_id not in owners.values()
    assert set(owners.values()) <= {after.instance_id, None}
    rows = await sender_storage.pool.fetch("SELECT instance_id FROM sender.replicas")
    assert before.instance_id not in {row["instance_id"] for row in rows}
    taken_back = [r for r in caplog.records if r.getMessage().startswith("took back")]
    assert [r.leases for r in taken_back] == [len(names)]  # type: ignore[attr-defined]


async def test_a_clean_stop_hands_over_at_once(
    sender_storage: SenderStorage, receiver_factory, replica_factory
) -> None:
    receivers = [await receiver_factory() for _ in range(4)]
    for receiver in receivers:
        await receiver.go_down()
    names = [r.server_name for r in receivers]
    ids = await queue_pdus(sender_storage, names, 2)
    leaving = await replica_factory(lease_seconds=3600)
    await wait_until(lambda: len(leaving.manager.workers) == len(names))
    staying = await replica_factory(lease_seconds=3600)
    await leaving.stop()
    for receiver in receivers:
        await receiver.come_back()
    for receiver in receivers:
        await wait_until(lambda r=receiver: r.pdu_ids() == ids, timeout=60)
    owners = await lease_owners(sender_storage)
    assert leaving.instance_id not in owners.values()
    assert staying.instance_id in owners.values()


async def test_a_lease_that_could_not_be_given_back_expires_instead_of_being_renewed(
    sender_storage: SenderStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that stops gives its lease back; should that statement fail, the replica
    no longer renews the lease (it expires), rather than keep it, unworked, for as long
    as it lives, so another replica can take the destination."""
    await queue_pdus(sender_storage, ["x.example"], 1)
    storage = SenderStorage(sender_storage.pool)
    membership = Membership(storage, "one", lease_seconds=1.0, heartbeat_interval=0.1)

    async def no_op() -> None:
        return None

    beating = asyncio.create_task(membership.run(no_op))
    try:
        assert await membership.claim(["x.example"]) == ["x.example"]
        await wait_until(lambda: len(membership.replicas) == 1 and membership.held)

        async def fails(instance_id: str, destinations: list[str]) -> None:
            raise asyncpg.LockNotAvailableError("could not give it back")

        monkeypatch.setattr(storage, "release_many", fails)
        with pytest.raises(asyncpg.LockNotAvailableError):
            await membership.release("x.example")
        # Still "one"'s in the table, but no longer renewed: another replica gets it.
        await wait_until(
            lambda: sender_storage.claim("two", ["x.example"], 30),
            what="the lease expired and was taken by another replica",
        )
        assert await lease_owners(sender_storage) == {"x.example": "two"}
        assert "x.example" not in membership.held
    finally:
        beating.cancel()
        await asyncio.gather(beating, return_exceptions=True)
