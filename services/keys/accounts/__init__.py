"""Accounts: profiles, devices, end-to-end keys and OpenID tokens of local
users, other servers' device lists, the to-device inboxes of local devices
(``to_device.py``) and other servers' users' presence (``presence.py``)
(``mxfed.keys.v1.Accounts``).

Served by the keys process as a separate gRPC service; tables in schema
``keys`` (migrations 100-199).
"""
