from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PerformThirdPartyInviteRequest(_message.Message):
    __slots__ = ("room_id", "sender", "id_server", "medium", "address", "id_access_token")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    ID_SERVER_FIELD_NUMBER: _ClassVar[int]
    MEDIUM_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ID_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    sender: str
    id_server: str
    medium: str
    address: str
    id_access_token: str
    def __init__(self, room_id: _Optional[str] = ..., sender: _Optional[str] = ..., id_server: _Optional[str] = ..., medium: _Optional[str] = ..., address: _Optional[str] = ..., id_access_token: _Optional[str] = ...) -> None: ...

class PerformThirdPartyInviteResponse(_message.Message):
    __slots__ = ("event_id", "token", "display_name")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    token: str
    display_name: str
    def __init__(self, event_id: _Optional[str] = ..., token: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class ReceiveOnBindRequest(_message.Message):
    __slots__ = ("body_json",)
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    body_json: bytes
    def __init__(self, body_json: _Optional[bytes] = ...) -> None: ...

class OnBindOutcome(_message.Message):
    __slots__ = ("room_id", "token", "result", "event_id", "error")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    token: str
    result: str
    event_id: str
    error: str
    def __init__(self, room_id: _Optional[str] = ..., token: _Optional[str] = ..., result: _Optional[str] = ..., event_id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ReceiveOnBindResponse(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[OnBindOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[OnBindOutcome, _Mapping]]] = ...) -> None: ...

class ExchangeThirdPartyInviteRequest(_message.Message):
    __slots__ = ("origin", "room_id", "event_json")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    origin: str
    room_id: str
    event_json: bytes
    def __init__(self, origin: _Optional[str] = ..., room_id: _Optional[str] = ..., event_json: _Optional[bytes] = ...) -> None: ...

class ExchangeThirdPartyInviteResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...
