from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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
    __slots__ = ("origin", "device_list_updates", "signing_key_updates", "to_device_messages", "presence_updates")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DEVICE_LIST_UPDATES_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_UPDATES_FIELD_NUMBER: _ClassVar[int]
    TO_DEVICE_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_UPDATES_FIELD_NUMBER: _ClassVar[int]
    origin: str
    device_list_updates: _containers.RepeatedScalarFieldContainer[bytes]
    signing_key_updates: _containers.RepeatedScalarFieldContainer[bytes]
    to_device_messages: _containers.RepeatedScalarFieldContainer[bytes]
    presence_updates: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, origin: _Optional[str] = ..., device_list_updates: _Optional[_Iterable[bytes]] = ..., signing_key_updates: _Optional[_Iterable[bytes]] = ..., to_device_messages: _Optional[_Iterable[bytes]] = ..., presence_updates: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InputDeviceListUpdatesResponse(_message.Message):
    __slots__ = ("applied", "resyncs", "ignored", "to_device_stored", "to_device_duplicates", "to_device_ignored", "presence_stored", "presence_ignored")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    RESYNCS_FIELD_NUMBER: _ClassVar[int]
    IGNORED_FIELD_NUMBER: _ClassVar[int]
    TO_DEVICE_STORED_FIELD_NUMBER: _ClassVar[int]
    TO_DEVICE_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    TO_DEVICE_IGNORED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_STORED_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_IGNORED_FIELD_NUMBER: _ClassVar[int]
    applied: int
    resyncs: int
    ignored: int
    to_device_stored: int
    to_device_duplicates: int
    to_device_ignored: int
    presence_stored: int
    presence_ignored: int
    def __init__(self, applied: _Optional[int] = ..., resyncs: _Optional[int] = ..., ignored: _Optional[int] = ..., to_device_stored: _Optional[int] = ..., to_device_duplicates: _Optional[int] = ..., to_device_ignored: _Optional[int] = ..., presence_stored: _Optional[int] = ..., presence_ignored: _Optional[int] = ...) -> None: ...

class ToDeviceMessage(_message.Message):
    __slots__ = ("position", "sender", "type", "content_json", "origin", "message_id", "received_ts")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TS_FIELD_NUMBER: _ClassVar[int]
    position: int
    sender: str
    type: str
    content_json: bytes
    origin: str
    message_id: str
    received_ts: int
    def __init__(self, position: _Optional[int] = ..., sender: _Optional[str] = ..., type: _Optional[str] = ..., content_json: _Optional[bytes] = ..., origin: _Optional[str] = ..., message_id: _Optional[str] = ..., received_ts: _Optional[int] = ...) -> None: ...

class QueryToDeviceMessagesRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "after_position", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    after_position: int
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., after_position: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryToDeviceMessagesResponse(_message.Message):
    __slots__ = ("messages", "more", "position")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ToDeviceMessage]
    more: bool
    position: int
    def __init__(self, messages: _Optional[_Iterable[_Union[ToDeviceMessage, _Mapping]]] = ..., more: _Optional[bool] = ..., position: _Optional[int] = ...) -> None: ...

class PerformAckToDeviceMessagesRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "up_to_position")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    UP_TO_POSITION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    up_to_position: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., up_to_position: _Optional[int] = ...) -> None: ...

class PerformAckToDeviceMessagesResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class StreamToDeviceMessagesRequest(_message.Message):
    __slots__ = ("user_id", "device_id", "after_position")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    device_id: str
    after_position: int
    def __init__(self, user_id: _Optional[str] = ..., device_id: _Optional[str] = ..., after_position: _Optional[int] = ...) -> None: ...

class QueryPresenceRequest(_message.Message):
    __slots__ = ("user_ids",)
    USER_IDS_FIELD_NUMBER: _ClassVar[int]
    user_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserPresence(_message.Message):
    __slots__ = ("user_id", "presence", "last_active_ago", "status_msg", "currently_active", "received_ts")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVE_AGO_FIELD_NUMBER: _ClassVar[int]
    STATUS_MSG_FIELD_NUMBER: _ClassVar[int]
    CURRENTLY_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    presence: str
    last_active_ago: int
    status_msg: str
    currently_active: bool
    received_ts: int
    def __init__(self, user_id: _Optional[str] = ..., presence: _Optional[str] = ..., last_active_ago: _Optional[int] = ..., status_msg: _Optional[str] = ..., currently_active: _Optional[bool] = ..., received_ts: _Optional[int] = ...) -> None: ...

class QueryPresenceResponse(_message.Message):
    __slots__ = ("presence",)
    PRESENCE_FIELD_NUMBER: _ClassVar[int]
    presence: _containers.RepeatedCompositeFieldContainer[UserPresence]
    def __init__(self, presence: _Optional[_Iterable[_Union[UserPresence, _Mapping]]] = ...) -> None: ...
