"""Events service: rooms as DAGs of PDUs — checks, auth, state, storage, streams.

Shards on: room id. Replicas take per-room leases in PostgreSQL so only one
replica processes a given room at a time; different rooms run in parallel.
"""
