from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MakeMembershipRequest(_message.Message):
    __slots__ = ("origin", "room_id", "user_id", "membership", "supported_versions")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    SUPPORTED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    user_id: str
    membership: str
    supported_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., membership: _Optional[str] = ..., supported_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class MakeMembershipResponse(_message.Message):
    __slots__ = ("room_version", "event_json")
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    room_version: str
    event_json: bytes
    def __init__(self, room_version: _Optional[str] = ..., event_json: _Optional[bytes] = ...) -> None: ...

class SendJoinRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_id", "pdu_json", "omit_members")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PDU_JSON_FIELD_NUMBER: _ClassVar[int]
    OMIT_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_id: str
    pdu_json: bytes
    omit_members: bool
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., pdu_json: _Optional[bytes] = ..., omit_members: _Optional[bool] = ...) -> None: ...

class SendJoinResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class SendLeaveRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_id", "pdu_json")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PDU_JSON_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_id: str
    pdu_json: bytes
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., pdu_json: _Optional[bytes] = ...) -> None: ...

class SendLeaveResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class SendKnockRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_id", "pdu_json")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    PDU_JSON_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_id: str
    pdu_json: bytes
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., pdu_json: _Optional[bytes] = ...) -> None: ...

class SendKnockResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class ReceiveInviteRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_id", "room_version", "pdu_json", "invite_room_state_json")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    PDU_JSON_FIELD_NUMBER: _ClassVar[int]
    INVITE_ROOM_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_id: str
    room_version: str
    pdu_json: bytes
    invite_room_state_json: bytes
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., room_version: _Optional[str] = ..., pdu_json: _Optional[bytes] = ..., invite_room_state_json: _Optional[bytes] = ...) -> None: ...

class ReceiveInviteResponse(_message.Message):
    __slots__ = ("event_json",)
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    event_json: bytes
    def __init__(self, event_json: _Optional[bytes] = ...) -> None: ...

class PerformInviteRequest(_message.Message):
    __slots__ = ("room_id", "sender", "target", "reason")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    sender: str
    target: str
    reason: str
    def __init__(self, room_id: _Optional[str] = ..., sender: _Optional[str] = ..., target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PerformInviteResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class PerformJoinRequest(_message.Message):
    __slots__ = ("room_id_or_alias", "user_id", "servers", "reason", "content_json")
    ROOM_ID_OR_ALIAS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONTENT_JSON_FIELD_NUMBER: _ClassVar[int]
    room_id_or_alias: str
    user_id: str
    servers: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    content_json: bytes
    def __init__(self, room_id_or_alias: _Optional[str] = ..., user_id: _Optional[str] = ..., servers: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., content_json: _Optional[bytes] = ...) -> None: ...

class PerformJoinResponse(_message.Message):
    __slots__ = ("room_id", "event_id", "remote")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    event_id: str
    remote: bool
    def __init__(self, room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., remote: _Optional[bool] = ...) -> None: ...

class PerformLeaveRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "reason")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    reason: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PerformLeaveResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class PerformKnockRequest(_message.Message):
    __slots__ = ("room_id_or_alias", "user_id", "servers", "reason")
    ROOM_ID_OR_ALIAS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    room_id_or_alias: str
    user_id: str
    servers: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, room_id_or_alias: _Optional[str] = ..., user_id: _Optional[str] = ..., servers: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class PerformKnockResponse(_message.Message):
    __slots__ = ("room_id", "event_id", "stripped_state_json")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPPED_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    event_id: str
    stripped_state_json: bytes
    def __init__(self, room_id: _Optional[str] = ..., event_id: _Optional[str] = ..., stripped_state_json: _Optional[bytes] = ...) -> None: ...

class QueryInvitesRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class OutOfBandMembership(_message.Message):
    __slots__ = ("room_id", "user_id", "membership", "event_id", "room_version", "sender", "via_server", "event_json", "stripped_state_json", "received_ts")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERSHIP_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_VERSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    VIA_SERVER_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    STRIPPED_STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_TS_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    membership: str
    event_id: str
    room_version: str
    sender: str
    via_server: str
    event_json: bytes
    stripped_state_json: bytes
    received_ts: int
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., membership: _Optional[str] = ..., event_id: _Optional[str] = ..., room_version: _Optional[str] = ..., sender: _Optional[str] = ..., via_server: _Optional[str] = ..., event_json: _Optional[bytes] = ..., stripped_state_json: _Optional[bytes] = ..., received_ts: _Optional[int] = ...) -> None: ...

class QueryInvitesResponse(_message.Message):
    __slots__ = ("memberships",)
    MEMBERSHIPS_FIELD_NUMBER: _ClassVar[int]
    memberships: _containers.RepeatedCompositeFieldContainer[OutOfBandMembership]
    def __init__(self, memberships: _Optional[_Iterable[_Union[OutOfBandMembership, _Mapping]]] = ...) -> None: ...
