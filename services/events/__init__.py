"""Events service: rooms as DAGs of PDUs — checks, auth, state, storage, streams.

Shards on: nothing. Callers spread their calls over the replicas round robin
(gRPC's ``round_robin`` policy, :mod:`mxfed.internal_plane`), so any replica
serves any room. Writes to one room are serialised by a transaction-scoped
PostgreSQL advisory lock on its room id (``storage.lock_room``, taken by every
:class:`~services.events.room_batch.RoomBatch`): one replica writes a given room
at a time, different rooms run in parallel. A /send transaction is processed
once across replicas (``input.TransactionGuard``, a session advisory lock per
origin and txn id).
"""
