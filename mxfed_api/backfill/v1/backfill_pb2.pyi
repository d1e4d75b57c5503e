from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryBackfillRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_ids", "limit")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryBackfillResponse(_message.Message):
    __slots__ = ("pdus",)
    PDUS_FIELD_NUMBER: _ClassVar[int]
    pdus: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pdus: _Optional[_Iterable[bytes]] = ...) -> None: ...

class QueryMissingEventsRequest(_message.Message):
    __slots__ = ("origin", "room_id", "earliest_events", "latest_events", "limit", "min_depth")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EARLIEST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LATEST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    earliest_events: _containers.RepeatedScalarFieldContainer[str]
    latest_events: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    min_depth: int
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., earliest_events: _Optional[_Iterable[str]] = ..., latest_events: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., min_depth: _Optional[int] = ...) -> None: ...

class QueryMissingEventsResponse(_message.Message):
    __slots__ = ("pdus",)
    PDUS_FIELD_NUMBER: _ClassVar[int]
    pdus: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, pdus: _Optional[_Iterable[bytes]] = ...) -> None: ...

class QueryEventAtTimestampRequest(_message.Message):
    __slots__ = ("origin", "room_id", "ts", "backwards")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    BACKWARDS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    ts: int
    backwards: bool
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., ts: _Optional[int] = ..., backwards: _Optional[bool] = ...) -> None: ...

class QueryEventAtTimestampResponse(_message.Message):
    __slots__ = ("found", "event_id", "origin_server_ts")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SERVER_TS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    event_id: str
    origin_server_ts: int
    def __init__(self, found: _Optional[bool] = ..., event_id: _Optional[str] = ..., origin_server_ts: _Optional[int] = ...) -> None: ...

class PerformBackfillRequest(_message.Message):
    __slots__ = ("room_id", "limit", "servers")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    limit: int
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., limit: _Optional[int] = ..., servers: _Optional[_Iterable[str]] = ...) -> None: ...

class PerformBackfillResponse(_message.Message):
    __slots__ = ("events_fetched", "server", "servers_failed", "events_refused")
    EVENTS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FAILED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    events_fetched: int
    server: str
    servers_failed: _containers.RepeatedScalarFieldContainer[str]
    events_refused: int
    def __init__(self, events_fetched: _Optional[int] = ..., server: _Optional[str] = ..., servers_failed: _Optional[_Iterable[str]] = ..., events_refused: _Optional[int] = ...) -> None: ...

class PerformFetchMissingEventsRequest(_message.Message):
    __slots__ = ("room_id", "origin", "event_json", "timeout_seconds")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    origin: str
    event_json: bytes
    timeout_seconds: float
    def __init__(self, room_id: _Optional[str] = ..., origin: _Optional[str] = ..., event_json: _Optional[bytes] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class PerformFetchMissingEventsResponse(_message.Message):
    __slots__ = ("events_fetched", "outliers_fetched", "still_missing", "state_after_missing_prevs")
    EVENTS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    STILL_MISSING_FIELD_NUMBER: _ClassVar[int]
    STATE_AFTER_MISSING_PREVS_FIELD_NUMBER: _ClassVar[int]
    events_fetched: int
    outliers_fetched: int
    still_missing: _containers.RepeatedScalarFieldContainer[str]
    state_after_missing_prevs: _containers.RepeatedCompositeFieldContainer[StateAtEvent]
    def __init__(self, events_fetched: _Optional[int] = ..., outliers_fetched: _Optional[int] = ..., still_missing: _Optional[_Iterable[str]] = ..., state_after_missing_prevs: _Optional[_Iterable[_Union[StateAtEvent, _Mapping]]] = ...) -> None: ...

class StateAtEvent(_message.Message):
    __slots__ = ("event_id", "state_event_ids")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    state_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., state_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PerformFetchEventsRequest(_message.Message):
    __slots__ = ("room_id", "origin", "event_ids", "with_auth_chain")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_AUTH_CHAIN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    origin: str
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    with_auth_chain: bool
    def __init__(self, room_id: _Optional[str] = ..., origin: _Optional[str] = ..., event_ids: _Optional[_Iterable[str]] = ..., with_auth_chain: _Optional[bool] = ...) -> None: ...

class PerformFetchEventsResponse(_message.Message):
    __slots__ = ("events_fetched", "still_missing")
    EVENTS_FETCHED_FIELD_NUMBER: _ClassVar[int]
    STILL_MISSING_FIELD_NUMBER: _ClassVar[int]
    events_fetched: int
    still_missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, events_fetched: _Optional[int] = ..., still_missing: _Optional[_Iterable[str]] = ...) -> None: ...
