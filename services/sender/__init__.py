"""Sender service: durable per-destination queues of PDUs and EDUs, sent as transactions.

Shards on: destination server name. Replicas split the destinations between
them through leases in PostgreSQL and rebalance when one dies or joins.
"""
