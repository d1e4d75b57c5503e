"""The events service's client of the keys service: small batches verified here.

A one-PDU transaction's signature check was a gRPC round trip to the keys
service (1.1–1.7 ms of a ~9 ms transaction on a quiet machine) for one ed25519
verification (~50 µs). Batches of at most :data:`LOCAL_MAX_SIGNATURES` signatures whose
keys the :class:`~mxfed.verify_key_cache.VerifyKeyCache` holds are verified in
this process; bigger batches, and any batch needing a key not held, go to the
keys service as before (it fetches keys and verifies big batches in threads),
and the keys its answer names fill the cache.
"""

from __future__ import annotations

from typing import Any

import grpc

from mxfed.verify_key_cache import VerifyKeyCache
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc

# Up to this many signatures a batch is verified here when every key is cached (a
# transaction of a PDU or two, an invite); more would take the events process's
# CPU from its rooms, which the keys service spares it. Signatures, not objects:
# the sender chooses how many an event carries (each one a verification).
LOCAL_MAX_SIGNATURES = 4


class KeysClient(keys_pb2_grpc.KeysStub):
    """``KeysStub`` whose ``VerifyJsonSignatures`` answers small batches itself when it can."""

    def __init__(self, channel: grpc.aio.Channel, cache: VerifyKeyCache) -> None:
        super().__init__(channel)
        self._remote_verify = self.VerifyJsonSignatures
        self._cache = cache
        self.VerifyJsonSignatures = self._verify_json_signatures

    async def _verify_json_signatures(
        self, request: keys_pb2.VerifyJsonSignaturesRequest, **kwargs: Any
    ) -> keys_pb2.VerifyJsonSignaturesResponse:
        if sum(len(item.signatures) for item in request.items) <= LOCAL_MAX_SIGNATURES:
            errors = self._cache.verify_json(request.items)
            if errors is not None:
                return keys_pb2.VerifyJsonSignaturesResponse(
                    results=[keys_pb2.VerifyResult(ok=not e, error=e or "") for e in errors]
                )
        reply = await self._remote_verify(request, **kwargs)
        self._cache.add(reply.keys)
        return reply
