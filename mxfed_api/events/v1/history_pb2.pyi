from mxfed_api.events.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QueryBackfillRequest(_message.Message):
    __slots__ = ("room_id", "from_event_ids", "limit", "as_server")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AS_SERVER_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    from_event_ids: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    as_server: str
    def __init__(self, room_id: _Optional[str] = ..., from_event_ids: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., as_server: _Optional[str] = ...) -> None: ...

class QueryBackfillResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.EventRecord]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.EventRecord, _Mapping]]] = ...) -> None: ...

class QueryMissingEventsRequest(_message.Message):
    __slots__ = ("room_id", "earliest_events", "latest_events", "limit", "min_depth", "as_server")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EARLIEST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LATEST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    AS_SERVER_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    earliest_events: _containers.RepeatedScalarFieldContainer[str]
    latest_events: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    min_depth: int
    as_server: str
    def __init__(self, room_id: _Optional[str] = ..., earliest_events: _Optional[_Iterable[str]] = ..., latest_events: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ..., min_depth: _Optional[int] = ..., as_server: _Optional[str] = ...) -> None: ...

class QueryMissingEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_events_pb2.EventRecord]
    def __init__(self, events: _Optional[_Iterable[_Union[_events_pb2.EventRecord, _Mapping]]] = ...) -> None: ...

class QueryEventAtTimestampRequest(_message.Message):
    __slots__ = ("room_id", "ts", "backwards")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    BACKWARDS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    ts: int
    backwards: bool
    def __init__(self, room_id: _Optional[str] = ..., ts: _Optional[int] = ..., backwards: _Optional[bool] = ...) -> None: ...

class QueryEventAtTimestampResponse(_message.Message):
    __slots__ = ("found", "event_id", "origin_server_ts")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_SERVER_TS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    event_id: str
    origin_server_ts: int
    def __init__(self, found: _Optional[bool] = ..., event_id: _Optional[str] = ..., origin_server_ts: _Optional[int] = ...) -> None: ...

class QueryBackwardExtremitiesRequest(_message.Message):
    __slots__ = ("room_id", "limit")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    limit: int
    def __init__(self, room_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class BackwardExtremity(_message.Message):
    __slots__ = ("event_id", "depth", "referenced_by")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    REFERENCED_BY_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    depth: int
    referenced_by: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., depth: _Optional[int] = ..., referenced_by: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryBackwardExtremitiesResponse(_message.Message):
    __slots__ = ("extremities",)
    EXTREMITIES_FIELD_NUMBER: _ClassVar[int]
    extremities: _containers.RepeatedCompositeFieldContainer[BackwardExtremity]
    def __init__(self, extremities: _Optional[_Iterable[_Union[BackwardExtremity, _Mapping]]] = ...) -> None: ...

class QueryServersByJoinAgeRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class QueryServersByJoinAgeResponse(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, servers: _Optional[_Iterable[str]] = ...) -> None: ...
