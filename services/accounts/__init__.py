"""Accounts service (``mxfed.accounts.v1.Accounts``): profiles, devices, end-to-end keys
and OpenID tokens of local users (``local.py``), other servers' device lists
(``remote.py``, ``joins.py``), the to-device inboxes of local devices
(``to_device.py``) and other servers' users' presence (``presence.py``).

Its own gRPC service with its own ``setup`` (``server.py``); the keys process
hosts it (``services/keys/server.py`` calls that ``setup``), so callers reach
it at the keys address and a small deployment runs one process for both. Its
tables are in its own ``accounts`` schema (``migrations/``, applied by its
``setup``; keys migrations 100-102 created them before they moved there).

Shards on: nothing. Calls reach the keys replicas round robin, all over the
same tables; one replica at a time (an advisory lock) follows the events
stream for the device lists a local join sends (``joins.py``), and a to-device
message wakes followers on every replica (NOTIFY).
"""
