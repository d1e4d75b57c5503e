"""Key service: our signing keys, remote server keys, notary, batch verification.

Shards on: nothing. Calls reach the replicas round robin; each replica keeps
remote keys in a bounded memory cache in front of the shared table
(``server_verify_keys``), so a key one replica fetched is read, not fetched,
by the others. Signature verification is stateless. One replica at a time (an
advisory lock) follows the events stream for device-list fan-out.
"""
