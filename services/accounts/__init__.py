"""Accounts service (``mxfed.accounts.v1.Accounts``): profiles, devices, end-to-end keys
and OpenID tokens of local users (``local.py``), other servers' device lists
(``remote.py``, ``joins.py``), the to-device inboxes of local devices
(``to_device.py``) and other servers' users' presence (``presence.py``).

Its own gRPC service with its own ``setup`` (``server.py``), run as its own part
(``mxfed run --service accounts``, ``accounts_in_keys`` off: compose, Kubernetes)
or hosted by the keys process (``accounts_in_keys`` on, the default:
``services/keys/server.py`` calls that ``setup``, callers reach it at the keys
address, and a small deployment runs one process for both). Its tables are in its
own ``accounts`` schema (``migrations/``; keys migrations 100-102 created them
before they moved there, so an accounts process applies those first).

Shards on: nothing. Calls reach the replicas round robin, all over the
same tables; one replica at a time (an advisory lock) follows the events
stream for the device lists a local join sends (``joins.py``), and a to-device
message wakes followers on every replica (NOTIFY).
"""
