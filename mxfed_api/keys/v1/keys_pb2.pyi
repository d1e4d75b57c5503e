from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryOwnServerKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryOwnServerKeysResponse(_message.Message):
    __slots__ = ("server_keys_json",)
    SERVER_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    server_keys_json: bytes
    def __init__(self, server_keys_json: _Optional[bytes] = ...) -> None: ...

class ServerKeyCriteria(_message.Message):
    __slots__ = ("server_name", "key_ids", "minimum_valid_until_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_VALID_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_ids: _containers.RepeatedScalarFieldContainer[str]
    minimum_valid_until_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_ids: _Optional[_Iterable[str]] = ..., minimum_valid_until_ts: _Optional[int] = ...) -> None: ...

class QueryServerKeysRequest(_message.Message):
    __slots__ = ("criteria",)
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    criteria: _containers.RepeatedCompositeFieldContainer[ServerKeyCriteria]
    def __init__(self, criteria: _Optional[_Iterable[_Union[ServerKeyCriteria, _Mapping]]] = ...) -> None: ...

class QueryServerKeysResponse(_message.Message):
    __slots__ = ("server_keys_json",)
    SERVER_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    server_keys_json: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, server_keys_json: _Optional[_Iterable[bytes]] = ...) -> None: ...

class VerifyKeyLookup(_message.Message):
    __slots__ = ("server_name", "key_id", "at_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    AT_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_id: str
    at_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_id: _Optional[str] = ..., at_ts: _Optional[int] = ...) -> None: ...

class QueryVerifyKeysRequest(_message.Message):
    __slots__ = ("lookups",)
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    lookups: _containers.RepeatedCompositeFieldContainer[VerifyKeyLookup]
    def __init__(self, lookups: _Optional[_Iterable[_Union[VerifyKeyLookup, _Mapping]]] = ...) -> None: ...

class ResolvedVerifyKey(_message.Message):
    __slots__ = ("server_name", "key_id", "found", "key", "valid_until_ts", "expired_ts", "usable_until_ts")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TS_FIELD_NUMBER: _ClassVar[int]
    USABLE_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    key_id: str
    found: bool
    key: str
    valid_until_ts: int
    expired_ts: int
    usable_until_ts: int
    def __init__(self, server_name: _Optional[str] = ..., key_id: _Optional[str] = ..., found: _Optional[bool] = ..., key: _Optional[str] = ..., valid_until_ts: _Optional[int] = ..., expired_ts: _Optional[int] = ..., usable_until_ts: _Optional[int] = ...) -> None: ...

class QueryVerifyKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[ResolvedVerifyKey]
    def __init__(self, keys: _Optional[_Iterable[_Union[ResolvedVerifyKey, _Mapping]]] = ...) -> None: ...

class JsonToVerify(_message.Message):
    __slots__ = ("json", "server_name", "at_ts", "enforce_key_validity")
    JSON_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    AT_TS_FIELD_NUMBER: _ClassVar[int]
    ENFORCE_KEY_VALIDITY_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    server_name: str
    at_ts: int
    enforce_key_validity: bool
    def __init__(self, json: _Optional[bytes] = ..., server_name: _Optional[str] = ..., at_ts: _Optional[int] = ..., enforce_key_validity: _Optional[bool] = ...) -> None: ...

class VerifyJsonSignaturesRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JsonToVerify]
    def __init__(self, items: _Optional[_Iterable[_Union[JsonToVerify, _Mapping]]] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class VerifyJsonSignaturesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ...) -> None: ...

class RequestSignature(_message.Message):
    __slots__ = ("key_id", "sig")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    sig: str
    def __init__(self, key_id: _Optional[str] = ..., sig: _Optional[str] = ...) -> None: ...

class VerifyRequestRequest(_message.Message):
    __slots__ = ("method", "uri", "origin", "destination", "content", "signatures")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    method: str
    uri: str
    origin: str
    destination: str
    content: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[RequestSignature]
    def __init__(self, method: _Optional[str] = ..., uri: _Optional[str] = ..., origin: _Optional[str] = ..., destination: _Optional[str] = ..., content: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[RequestSignature, _Mapping]]] = ...) -> None: ...

class VerifyRequestResponse(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class SignJsonRequest(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...

class SignJsonResponse(_message.Message):
    __slots__ = ("signed_json", "key_id")
    SIGNED_JSON_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    signed_json: bytes
    key_id: str
    def __init__(self, signed_json: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class PerformKeyRotationRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PerformKeyRotationResponse(_message.Message):
    __slots__ = ("new_key_id", "old_key_id", "expired_ts")
    NEW_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_TS_FIELD_NUMBER: _ClassVar[int]
    new_key_id: str
    old_key_id: str
    expired_ts: int
    def __init__(self, new_key_id: _Optional[str] = ..., old_key_id: _Optional[str] = ..., expired_ts: _Optional[int] = ...) -> None: ...
