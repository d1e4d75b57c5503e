from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_STATUS_UNSPECIFIED: _ClassVar[EventStatus]
    EVENT_STATUS_ACCEPTED: _ClassVar[EventStatus]
    EVENT_STATUS_SOFT_FAILED: _ClassVar[EventStatus]
    EVENT_STATUS_REJECTED: _ClassVar[EventStatus]
    EVENT_STATUS_OUTLIER: _ClassVar[EventStatus]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_NEW: _ClassVar[InputKind]
    INPUT_KIND_GAP_FILL: _ClassVar[InputKind]
    INPUT_KIND_OUTLIER: _ClassVar[InputKind]
    INPUT_KIND_BACKFILL: _ClassVar[InputKind]

class ResyncState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESYNC_STATE_UNSPECIFIED: _ClassVar[ResyncState]
    RESYNC_STATE_FULL_STATE: _ClassVar[ResyncState]
    RESYNC_STATE_PENDING: _ClassVar[ResyncState]
    RESYNC_STATE_FETCHING: _ClassVar[ResyncState]
    RESYNC_STATE_STORING: _ClassVar[ResyncState]
    RESYNC_STATE_RETRYING: _ClassVar[ResyncState]
EVENT_STATUS_UNSPECIFIED: EventStatus
EVENT_STATUS_ACCEPTED: EventStatus
EVENT_STATUS_SOFT_FAILED: EventStatus
EVENT_STATUS_REJECTED: EventStatus
EVENT_STATUS_OUTLIER: EventStatus
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_NEW: InputKind
INPUT_KIND_GAP_FILL: InputKind
INPUT_KIND_OUTLIER: InputKind
INPUT_KIND_BACKFILL: InputKind
RESYNC_STATE_UNSPECIFIED: ResyncState
RESYNC_STATE_FULL_STATE: ResyncState
RESYNC_STATE_PENDING: ResyncState
RESYNC_STATE_FETCHING: ResyncState
RESYNC_STATE_STORING: ResyncState
RESYNC_STATE_RETRYING: ResyncState

class EventRecord(_message.Message):
    __slots__ = ("event_id", "room_id", "room_version", "pdu_json", "status", "stream_position", "redacted", "rejection_reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    PDU_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STREAM_POSITION_FIELD_NUMBER: _ClassVar[int]
    REDACTED_FIELD_NUMBER: _ClassVar[int]
    REJECTION_REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    room_id: str
    room_version: str
    pdu_json: bytes
    status: EventStatus
    stream_position: int
    redacted: bool
    rejection_reason: str
    def __init__(self, event_id: _Optional[str] = ..., room_id: _Optional[str] = ..., room_version: _Optional[str] = ..., pdu_json: _Optional[bytes] = ..., status: _Optional[_Union[EventStatus, str]] = ..., stream_position: _Optional[int] = ..., redacted: _Optional[bool] = ..., rejection_reason: _Optional[str] = ...) -> None: ...

class InputTransactionRequest(_message.Message):
    __slots__ = ("origin", "txn_id", "pdus", "edus")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    PDUS_FIELD_NUMBER: _ClassVar[int]
    EDUS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    txn_id: str
    pdus: _containers.RepeatedScalarFieldContainer[bytes]
    edus: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, origin: _Optional[str] = ..., txn_id: _Optional[str] = ..., pdus: _Optional[_Iterable[bytes]] = ..., edus: _Optional[_Iterable[bytes]] = ...) -> None: ...

class InputTransactionResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class StateBefore(_message.Message):
    __slots__ = ("event_id", "state_event_ids")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    state_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., state_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class InputPdusRequest(_message.Message):
    __slots__ = ("room_id", "room_version", "origin", "kind", "pdus", "state_before")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PDUS_FIELD_NUMBER: _ClassVar[int]
    STATE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    room_version: str
    origin: str
    kind: InputKind
    pdus: _containers.RepeatedScalarFieldContainer[bytes]
    state_before: _containers.RepeatedCompositeFieldContainer[StateBefore]
    def __init__(self, room_id: _Optional[str] = ..., room_version: _Optional[str] = ..., origin: _Optional[str] = ..., kind: _Optional[_Union[InputKind, str]] = ..., pdus: _Optional[_Iterable[bytes]] = ..., state_before: _Optional[_Iterable[_Union[StateBefore, _Mapping]]] = ...) -> None: ...

class PduResult(_message.Message):
    __slots__ = ("event_id", "status", "error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    status: EventStatus
    error: str
    def __init__(self, event_id: _Optional[str] = ..., status: _Optional[_Union[EventStatus, str]] = ..., error: _Optional[str] = ...) -> None: ...

class InputPdusResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PduResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PduResult, _Mapping]]] = ...) -> None: ...

class PerformCreateRoomRequest(_message.Message):
    __slots__ = ("creator", "room_version", "preset", "name", "topic", "alias_localpart", "invite", "creation_content_json", "initial_state_json", "power_level_overrides_json", "additional_creators")
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    ALIAS_LOCALPART_FIELD_NUMBER: _ClassVar[int]
    INVITE_FIELD_NUMBER: _ClassVar[int]
    CREATION_CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    POWER_LEVEL_OVERRIDES_JSON_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_CREATORS_FIELD_NUMBER: _ClassVar[int]
    creator: str
    room_version: str
    preset: str
    name: str
    topic: str
    alias_localpart: str
    invite: _containers.RepeatedScalarFieldContainer[str]
    creation_content_json: bytes
    initial_state_json: bytes
    power_level_overrides_json: bytes
    additional_creators: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, creator: _Optional[str] = ..., room_version: _Optional[str] = ..., preset: _Optional[str] = ..., name: _Optional[str] = ..., topic: _Optional[str] = ..., alias_localpart: _Optional[str] = ..., invite: _Optional[_Iterable[str]] = ..., creation_content_json: _Optional[bytes] = ..., initial_state_json: _Optional[bytes] = ..., power_level_overrides_json: _Optional[bytes] = ..., additional_creators: _Optional[_Iterable[str]] = ...) -> None: ...

class PerformCreateRoomResponse(_message.Message):
    __slots__ = ("room_id", "room_alias")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_ALIAS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    room_alias: str
    def __init__(self, room_id: _Optional[str] = ..., room_alias: _Optional[str] = ...) -> None: ...

class PerformSendEventRequest(_message.Message):
    __slots__ = ("room_id", "sender", "type", "state_key", "content_json", "redacts", "txn_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    REDACTS_FIELD_NUMBER: _ClassVar[int]
    TXN_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    sender: str
    type: str
    state_key: str
    content_json: bytes
    redacts: str
    txn_id: str
    def __init__(self, room_id: _Optional[str] = ..., sender: _Optional[str] = ..., type: _Optional[str] = ..., state_key: _Optional[str] = ..., content_json: _Optional[bytes] = ..., redacts: _Optional[str] = ..., txn_id: _Optional[str] = ...) -> None: ...

class PerformSendEventResponse(_message.Message):
    __slots__ = ("event_id", "stream_position")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_POSITION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    stream_position: int
    def __init__(self, event_id: _Optional[str] = ..., stream_position: _Optional[int] = ...) -> None: ...

class StreamSendEventsRequest(_message.Message):
    __slots__ = ("sends",)
    SENDS_FIELD_NUMBER: _ClassVar[int]
    sends: _containers.RepeatedCompositeFieldContainer[SendEventItem]
    def __init__(self, sends: _Optional[_Iterable[_Union[SendEventItem, _Mapping]]] = ...) -> None: ...

class SendEventItem(_message.Message):
    __slots__ = ("id", "send", "timeout_ms", "traceparent")
    ID_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    send: PerformSendEventRequest
    timeout_ms: int
    traceparent: str
    def __init__(self, id: _Optional[int] = ..., send: _Optional[_Union[PerformSendEventRequest, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., traceparent: _Optional[str] = ...) -> None: ...

class StreamSendEventsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SendEventResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SendEventResult, _Mapping]]] = ...) -> None: ...

class SendEventResult(_message.Message):
    __slots__ = ("id", "sent", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    sent: PerformSendEventResponse
    error: SendEventError
    def __init__(self, id: _Optional[int] = ..., sent: _Optional[_Union[PerformSendEventResponse, _Mapping]] = ..., error: _Optional[_Union[SendEventError, _Mapping]] = ...) -> None: ...

class SendEventError(_message.Message):
    __slots__ = ("code", "message", "errcode", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERRCODE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    errcode: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., errcode: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PerformCreateAliasRequest(_message.Message):
    __slots__ = ("alias", "room_id", "creator", "servers")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    room_id: str
    creator: str
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, alias: _Optional[str] = ..., room_id: _Optional[str] = ..., creator: _Optional[str] = ..., servers: _Optional[_Iterable[str]] = ...) -> None: ...

class PerformCreateAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PerformDeleteAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class PerformDeleteAliasResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryEventsRequest(_message.Message):
    __slots__ = ("event_ids", "as_server", "partial_state_history")
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    AS_SERVER_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_STATE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    as_server: str
    partial_state_history: bool
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ..., as_server: _Optional[str] = ..., partial_state_history: _Optional[bool] = ...) -> None: ...

class QueryEventsResponse(_message.Message):
    __slots__ = ("events", "partial_state_event_ids")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_STATE_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[EventRecord]
    partial_state_event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, events: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ..., partial_state_event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryStateAtEventRequest(_message.Message):
    __slots__ = ("room_id", "event_id", "ids_only", "include_auth_chain")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_AUTH_CHAIN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    event_id: str
    ids_only: bool
    include_auth_chain: bool
    def __init__(self, room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., ids_only: _Optional[bool] = ..., include_auth_chain: _Optional[bool] = ...) -> None: ...

class QueryStateAtEventResponse(_message.Message):
    __slots__ = ("found", "state_event_ids", "auth_chain_ids", "state_events", "auth_chain")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    STATE_EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    AUTH_CHAIN_IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    AUTH_CHAIN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    state_event_ids: _containers.RepeatedScalarFieldContainer[str]
    auth_chain_ids: _containers.RepeatedScalarFieldContainer[str]
    state_events: _containers.RepeatedCompositeFieldContainer[EventRecord]
    auth_chain: _containers.RepeatedCompositeFieldContainer[EventRecord]
    def __init__(self, found: _Optional[bool] = ..., state_event_ids: _Optional[_Iterable[str]] = ..., auth_chain_ids: _Optional[_Iterable[str]] = ..., state_events: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ..., auth_chain: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ...) -> None: ...

class QueryAuthChainRequest(_message.Message):
    __slots__ = ("room_id", "event_ids", "ids_only")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    ids_only: bool
    def __init__(self, room_id: _Optional[str] = ..., event_ids: _Optional[_Iterable[str]] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class QueryAuthChainResponse(_message.Message):
    __slots__ = ("event_ids", "events")
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    events: _containers.RepeatedCompositeFieldContainer[EventRecord]
    def __init__(self, event_ids: _Optional[_Iterable[str]] = ..., events: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ...) -> None: ...

class StateKeyFilter(_message.Message):
    __slots__ = ("type", "state_key")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_KEY_FIELD_NUMBER: _ClassVar[int]
    type: str
    state_key: str
    def __init__(self, type: _Optional[str] = ..., state_key: _Optional[str] = ...) -> None: ...

class QueryCurrentStateRequest(_message.Message):
    __slots__ = ("room_id", "filter")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    filter: _containers.RepeatedCompositeFieldContainer[StateKeyFilter]
    def __init__(self, room_id: _Optional[str] = ..., filter: _Optional[_Iterable[_Union[StateKeyFilter, _Mapping]]] = ...) -> None: ...

class QueryCurrentStateResponse(_message.Message):
    __slots__ = ("room_exists", "events")
    ROOM_EXISTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    room_exists: bool
    events: _containers.RepeatedCompositeFieldContainer[EventRecord]
    def __init__(self, room_exists: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ...) -> None: ...

class QueryTimelineRequest(_message.Message):
    __slots__ = ("room_id", "from_token", "backwards", "limit")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BACKWARDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    from_token: str
    backwards: bool
    limit: int
    def __init__(self, room_id: _Optional[str] = ..., from_token: _Optional[str] = ..., backwards: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryTimelineResponse(_message.Message):
    __slots__ = ("events", "next_token", "reached_room_start", "resume_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REACHED_ROOM_START_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[EventRecord]
    next_token: str
    reached_room_start: bool
    resume_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[EventRecord, _Mapping]]] = ..., next_token: _Optional[str] = ..., reached_room_start: _Optional[bool] = ..., resume_token: _Optional[str] = ...) -> None: ...

class QueryRoomInfoRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class QueryRoomInfoResponse(_message.Message):
    __slots__ = ("exists", "room_version", "forward_extremities", "min_depth", "max_depth", "we_are_joined", "create_event_id", "resync_state", "members_known", "members_expected", "resync_attempts", "resync_error")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORWARD_EXTREMITIES_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    WE_ARE_JOINED_FIELD_NUMBER: _ClassVar[int]
    CREATE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESYNC_STATE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_KNOWN_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_EXPECTED_FIELD_NUMBER: _ClassVar[int]
    RESYNC_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESYNC_ERROR_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    room_version: str
    forward_extremities: _containers.RepeatedScalarFieldContainer[str]
    min_depth: int
    max_depth: int
    we_are_joined: bool
    create_event_id: str
    resync_state: ResyncState
    members_known: int
    members_expected: int
    resync_attempts: int
    resync_error: str
    def __init__(self, exists: _Optional[bool] = ..., room_version: _Optional[str] = ..., forward_extremities: _Optional[_Iterable[str]] = ..., min_depth: _Optional[int] = ..., max_depth: _Optional[int] = ..., we_are_joined: _Optional[bool] = ..., create_event_id: _Optional[str] = ..., resync_state: _Optional[_Union[ResyncState, str]] = ..., members_known: _Optional[int] = ..., members_expected: _Optional[int] = ..., resync_attempts: _Optional[int] = ..., resync_error: _Optional[str] = ...) -> None: ...

class QueryServersInRoomRequest(_message.Message):
    __slots__ = ("room_id", "at_event_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    AT_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    at_event_id: str
    def __init__(self, room_id: _Optional[str] = ..., at_event_id: _Optional[str] = ...) -> None: ...

class QueryServersInRoomResponse(_message.Message):
    __slots__ = ("servers",)
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, servers: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class QueryAliasResponse(_message.Message):
    __slots__ = ("found", "room_id", "servers")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    room_id: str
    servers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, found: _Optional[bool] = ..., room_id: _Optional[str] = ..., servers: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryServerAllowedRequest(_message.Message):
    __slots__ = ("room_id", "server_name", "check_acl", "require_joined", "allow_partial_state")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    CHECK_ACL_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_JOINED_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    server_name: str
    check_acl: bool
    require_joined: bool
    allow_partial_state: bool
    def __init__(self, room_id: _Optional[str] = ..., server_name: _Optional[str] = ..., check_acl: _Optional[bool] = ..., require_joined: _Optional[bool] = ..., allow_partial_state: _Optional[bool] = ...) -> None: ...

class QueryServerAllowedResponse(_message.Message):
    __slots__ = ("room_exists", "allowed", "reason", "partial_state")
    ROOM_EXISTS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    room_exists: bool
    allowed: bool
    reason: str
    partial_state: bool
    def __init__(self, room_exists: _Optional[bool] = ..., allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., partial_state: _Optional[bool] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("room_id", "after_position", "local_senders_only", "include_ephemeral", "event_types")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    LOCAL_SENDERS_ONLY_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EPHEMERAL_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    after_position: int
    local_senders_only: bool
    include_ephemeral: bool
    event_types: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_id: _Optional[str] = ..., after_position: _Optional[int] = ..., local_senders_only: _Optional[bool] = ..., include_ephemeral: _Optional[bool] = ..., event_types: _Optional[_Iterable[str]] = ...) -> None: ...

class Typing(_message.Message):
    __slots__ = ("room_id", "user_id", "typing")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    typing: bool
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., typing: _Optional[bool] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("room_id", "user_id", "receipt_type", "event_id", "data_json")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    receipt_type: str
    event_id: str
    data_json: bytes
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., receipt_type: _Optional[str] = ..., event_id: _Optional[str] = ..., data_json: _Optional[bytes] = ...) -> None: ...

class StreamEventBatchesRequest(_message.Message):
    __slots__ = ("stream",)
    STREAM_FIELD_NUMBER: _ClassVar[int]
    stream: StreamEventsRequest
    def __init__(self, stream: _Optional[_Union[StreamEventsRequest, _Mapping]] = ...) -> None: ...

class StreamEventBatchesResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[StreamEventsResponse]
    def __init__(self, items: _Optional[_Iterable[_Union[StreamEventsResponse, _Mapping]]] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("position", "event", "typing", "receipt", "servers_before", "relayed_for", "traceparent")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TYPING_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    SERVERS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    RELAYED_FOR_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    position: int
    event: EventRecord
    typing: Typing
    receipt: Receipt
    servers_before: _containers.RepeatedScalarFieldContainer[str]
    relayed_for: str
    traceparent: str
    def __init__(self, position: _Optional[int] = ..., event: _Optional[_Union[EventRecord, _Mapping]] = ..., typing: _Optional[_Union[Typing, _Mapping]] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., servers_before: _Optional[_Iterable[str]] = ..., relayed_for: _Optional[str] = ..., traceparent: _Optional[str] = ...) -> None: ...
