from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PerformSetProfileRequest(_message.Message):
    __slots__ = ("user_id", "fields_json", "replace")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    fields_json: bytes
    replace: bool
    def __init__(self, user_id: _Optional[str] = ..., fields_json: _Optional[bytes] = ..., replace: _Optional[bool] = ...) -> None: ...

class PerformSetProfileResponse(_message.Message):
    __slots__ = ("profile_json",)
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    profile_json: bytes
    def __init__(self, profile_json: _Optional[bytes] = ...) -> None: ...

class QueryProfileRequest(_message.Message):
    __slots__ = ("user_id", "field")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    field: str
    def __init__(self, user_id: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class QueryProfileResponse(_message.Message):
    __slots__ = ("found", "profile_json")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    PROFILE_JSON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    profile_json: bytes
    def __init__(self, found: _Optional[bool] = ..., profile_json: _Optional[bytes] = ...) -> None: ...

class PerformUploadKeysRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "display_name", "device_keys_json", "one_time_keys_json", "fallback_keys_json")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    ONE_TIME_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    display_name: str
    device_keys_json: bytes
    one_time_keys_json: bytes
    fallback_keys_json: bytes
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., display_name: _Optional[str] = ..., device_keys_json: _Optional[bytes] = ..., one_time_keys_json: _Optional[bytes] = ..., fallback_keys_json: _Optional[bytes] = ...) -> None: ...

class PerformUploadKeysResponse(_message.Message):
    __slots__ = ("one_time_key_counts", "stream_id")
    class OneTimeKeyCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ONE_TIME_KEY_COUNTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    one_time_key_counts: _containers.ScalarMap[str, int]
    stream_id: int
    def __init__(self, one_time_key_counts: _Optional[_Mapping[str, int]] = ..., stream_id: _Optional[int] = ...) -> None: ...

class PerformUploadCrossSigningKeysRequest(_message.Message):
    __slots__ = ("user_id", "master_key_json", "self_signing_key_json", "user_signing_key_json")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    SELF_SIGNING_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    USER_SIGNING_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    master_key_json: bytes
    self_signing_key_json: bytes
    user_signing_key_json: bytes
    def __init__(self, user_id: _Optional[str] = ..., master_key_json: _Optional[bytes] = ..., self_signing_key_json: _Optional[bytes] = ..., user_signing_key_json: _Optional[bytes] = ...) -> None: ...

class PerformUploadCrossSigningKeysResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PerformDeleteDeviceRequest(_message.Message):
    __slots__ = ("user_id", "device_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ...) -> None: ...

class PerformDeleteDeviceResponse(_message.Message):
    __slots__ = ("deleted", "stream_id")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    stream_id: int
    def __init__(self, deleted: _Optional[bool] = ..., stream_id: _Optional[int] = ...) -> None: ...

class QueryUserDevicesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class QueryUserDevicesResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class QueryKeysRequest(_message.Message):
    __slots__ = ("device_keys_json", "local_only")
    DEVICE_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    device_keys_json: bytes
    local_only: bool
    def __init__(self, device_keys_json: _Optional[bytes] = ..., local_only: _Optional[bool] = ...) -> None: ...

class QueryKeysResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class PerformClaimKeysRequest(_message.Message):
    __slots__ = ("one_time_keys_json",)
    ONE_TIME_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    one_time_keys_json: bytes
    def __init__(self, one_time_keys_json: _Optional[bytes] = ...) -> None: ...

class PerformClaimKeysResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class PerformMintOpenIdTokenRequest(_message.Message):
    __slots__ = ("user_id", "ttl_ms")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    ttl_ms: int
    def __init__(self, user_id: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class PerformMintOpenIdTokenResponse(_message.Message):
    __slots__ = ("access_token", "expires_in_ms")
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    expires_in_ms: int
    def __init__(self, access_token: _Optional[str] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class QueryOpenIdTokenRequest(_message.Message):
    __slots__ = ("access_token",)
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    def __init__(self, access_token: _Optional[str] = ...) -> None: ...

class QueryOpenIdTokenResponse(_message.Message):
    __slots__ = ("found", "user_id")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    found: bool
    user_id: str
    def __init__(self, found: _Optional[bool] = ..., user_id: _Optional[str] = ...) -> None: ...

class QueryRemoteDevicesRequest(_message.Message):
    __slots__ = ("user_id", "force_resync")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_RESYNC_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    force_resync: bool
    def __init__(self, user_id: _Optional[str] = ..., force_resync: _Optional[bool] = ...) -> None: ...

class QueryRemoteDevicesResponse(_message.Message):
    __slots__ = ("response_json", "from_cache")
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    FROM_CACHE_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    from_cache: bool
    def __init__(self, response_json: _Optional[bytes] = ..., from_cache: _Optional[bool] = ...) -> None: ...

class InputDeviceListUpdatesRequest(_message.Message):
    __slots__ = ("origin", "device_list_updates", "signing_key_updates")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_LIST_UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_UPDATES_FIELD_NUMBER: _ClassVar[int]
    origin: str
    device_list_updates: _containers.RepeatedScalarFieldContainer[bytes]
    signing_key_updates: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, origin: _Optional[str] = ..., device_list_updates: _Optional[_Iterable[bytes]] = ..., signing_key_updates: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InputDeviceListUpdatesResponse(_message.Message):
    __slots__ = ("applied", "resyncs", "ignored")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    resyncs: int
    ignored: int
    def __init__(self, applied: _Optional[int] = ..., resyncs: _Optional[int] = ..., ignored: _Optional[int] = ...) -> None: ...
