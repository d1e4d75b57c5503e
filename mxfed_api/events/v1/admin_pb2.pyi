from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PerformBlockServerRequest(_message.Message):
    __slots__ = ("pattern", "reason", "allow")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    reason: str
    allow: bool
    def __init__(self, pattern: _Optional[str] = ..., reason: _Optional[str] = ..., allow: _Optional[bool] = ...) -> None: ...

class PerformBlockServerResponse(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: bool
    def __init__(self, added: _Optional[bool] = ...) -> None: ...

class PerformUnblockServerRequest(_message.Message):
    __slots__ = ("pattern", "allow")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    allow: bool
    def __init__(self, pattern: _Optional[str] = ..., allow: _Optional[bool] = ...) -> None: ...

class PerformUnblockServerResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class PerformSetAllowListModeRequest(_message.Message):
    __slots__ = ("enabled",)
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    def __init__(self, enabled: _Optional[bool] = ...) -> None: ...

class PerformSetAllowListModeResponse(_message.Message):
    __slots__ = ("was_enabled",)
    WAS_ENABLED_FIELD_NUMBER: _ClassVar[int]
    was_enabled: bool
    def __init__(self, was_enabled: _Optional[bool] = ...) -> None: ...

class QueryServerPolicyRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class ServerRule(_message.Message):
    __slots__ = ("pattern", "allow", "reason", "created_by", "created_ts")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_TS_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    allow: bool
    reason: str
    created_by: str
    created_ts: int
    def __init__(self, pattern: _Optional[str] = ..., allow: _Optional[bool] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., created_ts: _Optional[int] = ...) -> None: ...

class QueryServerPolicyResponse(_message.Message):
    __slots__ = ("version", "unchanged", "allow_list_mode", "rules")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_LIST_MODE_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    version: int
    unchanged: bool
    allow_list_mode: bool
    rules: _containers.RepeatedCompositeFieldContainer[ServerRule]
    def __init__(self, version: _Optional[int] = ..., unchanged: _Optional[bool] = ..., allow_list_mode: _Optional[bool] = ..., rules: _Optional[_Iterable[_Union[ServerRule, _Mapping]]] = ...) -> None: ...

class PerformShutdownRoomRequest(_message.Message):
    __slots__ = ("room_id", "reason", "purge")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    reason: str
    purge: bool
    def __init__(self, room_id: _Optional[str] = ..., reason: _Optional[str] = ..., purge: _Optional[bool] = ...) -> None: ...

class PerformShutdownRoomResponse(_message.Message):
    __slots__ = ("left_users", "purged_events")
    LEFT_USERS_FIELD_NUMBER: _ClassVar[int]
    PURGED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    left_users: _containers.RepeatedScalarFieldContainer[str]
    purged_events: int
    def __init__(self, left_users: _Optional[_Iterable[str]] = ..., purged_events: _Optional[int] = ...) -> None: ...

class PerformBlockRoomRequest(_message.Message):
    __slots__ = ("room_id", "reason", "unblock")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNBLOCK_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    reason: str
    unblock: bool
    def __init__(self, room_id: _Optional[str] = ..., reason: _Optional[str] = ..., unblock: _Optional[bool] = ...) -> None: ...

class PerformBlockRoomResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    def __init__(self, changed: _Optional[bool] = ...) -> None: ...

class QueryBlockedRoomsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlockedRoom(_message.Message):
    __slots__ = ("room_id", "reason", "created_by", "created_ts")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_TS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    reason: str
    created_by: str
    created_ts: int
    def __init__(self, room_id: _Optional[str] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., created_ts: _Optional[int] = ...) -> None: ...

class QueryBlockedRoomsResponse(_message.Message):
    __slots__ = ("rooms",)
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[BlockedRoom]
    def __init__(self, rooms: _Optional[_Iterable[_Union[BlockedRoom, _Mapping]]] = ...) -> None: ...

class PerformPurgeHistoryRequest(_message.Message):
    __slots__ = ("room_id", "before_ts", "before_event_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    BEFORE_TS_FIELD_NUMBER: _ClassVar[int]
    BEFORE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    before_ts: int
    before_event_id: str
    def __init__(self, room_id: _Optional[str] = ..., before_ts: _Optional[int] = ..., before_event_id: _Optional[str] = ...) -> None: ...

class PerformPurgeHistoryResponse(_message.Message):
    __slots__ = ("purged_events", "kept_events")
    PURGED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    KEPT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    purged_events: int
    kept_events: int
    def __init__(self, purged_events: _Optional[int] = ..., kept_events: _Optional[int] = ...) -> None: ...

class QueryAuditLogRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "ts", "caller", "action", "target", "details_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    ts: int
    caller: str
    action: str
    target: str
    details_json: bytes
    def __init__(self, id: _Optional[int] = ..., ts: _Optional[int] = ..., caller: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., details_json: _Optional[bytes] = ...) -> None: ...

class QueryAuditLogResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...
