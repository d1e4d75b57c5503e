from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Edu(_message.Message):
    __slots__ = ("edu_type", "content_json", "destinations", "room_ids")
    EDU_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    ROOM_IDS_FIELD_NUMBER: _ClassVar[int]
    edu_type: str
    content_json: bytes
    destinations: _containers.RepeatedScalarFieldContainer[str]
    room_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, edu_type: _Optional[str] = ..., content_json: _Optional[bytes] = ..., destinations: _Optional[_Iterable[str]] = ..., room_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ToDevice(_message.Message):
    __slots__ = ("sender", "type", "message_id", "messages_json")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_JSON_FIELD_NUMBER: _ClassVar[int]
    sender: str
    type: str
    message_id: str
    messages_json: bytes
    def __init__(self, sender: _Optional[str] = ..., type: _Optional[str] = ..., message_id: _Optional[str] = ..., messages_json: _Optional[bytes] = ...) -> None: ...

class PerformSendEdusRequest(_message.Message):
    __slots__ = ("edus", "to_device")
    EDUS_FIELD_NUMBER: _ClassVar[int]
    TO_DEVICE_FIELD_NUMBER: _ClassVar[int]
    edus: _containers.RepeatedCompositeFieldContainer[Edu]
    to_device: _containers.RepeatedCompositeFieldContainer[ToDevice]
    def __init__(self, edus: _Optional[_Iterable[_Union[Edu, _Mapping]]] = ..., to_device: _Optional[_Iterable[_Union[ToDevice, _Mapping]]] = ...) -> None: ...

class PerformSendEdusResponse(_message.Message):
    __slots__ = ("queued",)
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    queued: int
    def __init__(self, queued: _Optional[int] = ...) -> None: ...

class PerformServerUpRequest(_message.Message):
    __slots__ = ("server_name",)
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    def __init__(self, server_name: _Optional[str] = ...) -> None: ...

class PerformServerUpResponse(_message.Message):
    __slots__ = ("was_backed_off",)
    WAS_BACKED_OFF_FIELD_NUMBER: _ClassVar[int]
    was_backed_off: bool
    def __init__(self, was_backed_off: _Optional[bool] = ...) -> None: ...

class QueryDestinationsRequest(_message.Message):
    __slots__ = ("destinations", "include_idle", "limit")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IDLE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedScalarFieldContainer[str]
    include_idle: bool
    limit: int
    def __init__(self, destinations: _Optional[_Iterable[str]] = ..., include_idle: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class DestinationInfo(_message.Message):
    __slots__ = ("destination", "pending_pdus", "pending_edus", "oldest_pending_ts", "last_success_ts", "backoff_until_ts", "retry_interval_ms", "lease_owner", "pending_txn_id", "failures", "last_error")
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    PENDING_PDUS_FIELD_NUMBER: _ClassVar[int]
    PENDING_EDUS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_TS_FIELD_NUMBER: _ClassVar[int]
    LAST_SUCCESS_TS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_UNTIL_TS_FIELD_NUMBER: _ClassVar[int]
    RETRY_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    PENDING_TXN_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    destination: str
    pending_pdus: int
    pending_edus: int
    oldest_pending_ts: int
    last_success_ts: int
    backoff_until_ts: int
    retry_interval_ms: int
    lease_owner: str
    pending_txn_id: str
    failures: int
    last_error: str
    def __init__(self, destination: _Optional[str] = ..., pending_pdus: _Optional[int] = ..., pending_edus: _Optional[int] = ..., oldest_pending_ts: _Optional[int] = ..., last_success_ts: _Optional[int] = ..., backoff_until_ts: _Optional[int] = ..., retry_interval_ms: _Optional[int] = ..., lease_owner: _Optional[str] = ..., pending_txn_id: _Optional[str] = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class QueryDestinationsResponse(_message.Message):
    __slots__ = ("destinations", "live_replicas")
    DESTINATIONS_FIELD_NUMBER: _ClassVar[int]
    LIVE_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    destinations: _containers.RepeatedCompositeFieldContainer[DestinationInfo]
    live_replicas: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, destinations: _Optional[_Iterable[_Union[DestinationInfo, _Mapping]]] = ..., live_replicas: _Optional[_Iterable[str]] = ...) -> None: ...
