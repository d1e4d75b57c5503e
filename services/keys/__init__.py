"""Key service: our signing keys, remote server keys, notary, batch verification.

Shards on: server name for the remote-key cache; signature verification is
stateless, so any replica answers any verification request.
"""
