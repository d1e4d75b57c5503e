"""Accounts: profiles, devices, end-to-end keys and OpenID tokens of local
users, and other servers' device lists (``mxfed.keys.v1.Accounts``).

Served by the keys process as a separate gRPC service; tables in schema
``keys`` (migrations 100-199).
"""
