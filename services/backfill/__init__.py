"""Backfill service: serving and fetching history (backfill, get_missing_events).

Shards on: room id for fetching; serving is stateless.
"""
