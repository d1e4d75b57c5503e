"""The gRPC face of the keys service (``mxfed.keys.v1.Keys``): translation only.

Errors about a request itself are INVALID_ARGUMENT with the Matrix errcode
(:mod:`mxfed.service_errors`; the gateway turns those into Matrix errors); a signature that does
not verify is a result, not an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from matrix_protocol.canonical_json import decode_json
from mxfed_api.keys.v1 import keys_pb2, keys_pb2_grpc
from services.keys.doctor.servicer import DoctorRpc
from services.keys.keyring import JsonCheck, KeyNeed, Keyring
from services.keys.own_keys import OwnKeys
from services.keys.storage import RemoteKey


def _resolved(key: RemoteKey) -> keys_pb2.ResolvedVerifyKey:
    return keys_pb2.ResolvedVerifyKey(
        server_name=key.server_name,
        key_id=key.key_id,
        found=True,
        key=key.verify_key,
        valid_until_ts=key.valid_until_ts,
        expired_ts=key.expired_ts or 0,
        usable_until_ts=key.usable_until_ts,
    )


class KeysServicer(keys_pb2_grpc.KeysServicer):
    def __init__(self, keyring: Keyring, own_keys: OwnKeys, doctor: DoctorRpc) -> None:
        self.keyring = keyring
        self.own_keys = own_keys
        self.doctor = doctor

    async def QueryOwnServerKeys(
        self, request: keys_pb2.QueryOwnServerKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.QueryOwnServerKeysResponse:
        signed = await self.own_keys.server_keys()
        return keys_pb2.QueryOwnServerKeysResponse(server_keys_json=signed.json)

    async def QueryServerKeys(
        self, request: keys_pb2.QueryServerKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.QueryServerKeysResponse:
        found = await self.keyring.query_server_keys(
            [
                (criteria.server_name, list(criteria.key_ids), criteria.minimum_valid_until_ts)
                for criteria in request.criteria
            ]
        )
        return keys_pb2.QueryServerKeysResponse(server_keys_json=found)

    async def QueryVerifyKeys(
        self, request: keys_pb2.QueryVerifyKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.QueryVerifyKeysResponse:
        needs = [
            KeyNeed(lookup.server_name, (lookup.key_id,), lookup.at_ts, lookup.at_ts != 0)
            for lookup in request.lookups
        ]
        await self.keyring.ensure_keys(needs)
        answers = []
        for need in needs:
            found = self.keyring.usable_keys(need)
            answers.append(
                _resolved(found[0])
                if found
                else keys_pb2.ResolvedVerifyKey(
                    server_name=need.server_name, key_id=need.key_ids[0]
                )
            )
        return keys_pb2.QueryVerifyKeysResponse(keys=answers)

    async def VerifyJsonSignatures(
        self, request: keys_pb2.VerifyJsonSignaturesRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.VerifyJsonSignaturesResponse:
        errors, used = await self.keyring.verify_json_batch(
            [
                JsonCheck(
                    item.json,
                    item.server_name,
                    item.at_ts,
                    item.enforce_key_validity,
                    item.signed_json or None,
                    dict(item.signatures) if item.signed_json else None,
                )
                for item in request.items
            ]
        )
        return keys_pb2.VerifyJsonSignaturesResponse(
            results=[keys_pb2.VerifyResult(ok=not error, error=error or "") for error in errors],
            keys=[_resolved(key) for key in used],
        )

    async def VerifyRequest(
        self, request: keys_pb2.VerifyRequestRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.VerifyRequestResponse:
        content: Any = None
        if request.HasField("content"):
            try:
                content = decode_json(request.content)
            except ValueError:
                return keys_pb2.VerifyRequestResponse(ok=False, error="body is not valid JSON")
        error, used = await self.keyring.verify_request(
            request.method,
            request.uri,
            request.origin,
            request.destination or None,
            content,
            [(signature.key_id, signature.sig) for signature in request.signatures],
        )
        return keys_pb2.VerifyRequestResponse(
            ok=error is None, error=error or "", keys=[_resolved(key) for key in used]
        )

    async def PerformKeyRotation(
        self, request: keys_pb2.PerformKeyRotationRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.PerformKeyRotationResponse:
        rotation = await self.own_keys.rotate()
        return keys_pb2.PerformKeyRotationResponse(
            new_key_id=rotation.new_key_id,
            old_key_id=rotation.old_key_id,
            expired_ts=rotation.expired_ts,
        )

    async def QueryFederationReport(
        self,
        request: keys_pb2.QueryFederationReportRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[keys_pb2.QueryFederationReportResponse]:
        async for item in self.doctor.query_federation_report(request, context):
            yield item
