"""Backfill service: serving and fetching history (backfill, get_missing_events).

Shards on: nothing. Calls reach the replicas round robin; serving is
stateless, and fetching for one room runs one operation at a time within a
replica (an asyncio lock per room). Two replicas may fetch for the same room
at once: the events service stores what both bring once (every write goes
through its room lock, and an event already held is not stored again).
"""
