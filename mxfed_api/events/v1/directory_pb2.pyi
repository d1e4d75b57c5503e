from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PerformPublishRoomRequest(_message.Message):
    __slots__ = ("room_id", "network_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    network_id: str
    def __init__(self, room_id: _Optional[str] = ..., network_id: _Optional[str] = ...) -> None: ...

class PerformPublishRoomResponse(_message.Message):
    __slots__ = ("was_published",)
    WAS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    was_published: bool
    def __init__(self, was_published: _Optional[bool] = ...) -> None: ...

class PerformUnpublishRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class PerformUnpublishRoomResponse(_message.Message):
    __slots__ = ("was_published",)
    WAS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    was_published: bool
    def __init__(self, was_published: _Optional[bool] = ...) -> None: ...

class RoomTypeFilter(_message.Message):
    __slots__ = ("room_types", "include_untyped")
    ROOM_TYPES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNTYPED_FIELD_NUMBER: _ClassVar[int]
    room_types: _containers.RepeatedScalarFieldContainer[str]
    include_untyped: bool
    def __init__(self, room_types: _Optional[_Iterable[str]] = ..., include_untyped: _Optional[bool] = ...) -> None: ...

class QueryPublicRoomsRequest(_message.Message):
    __slots__ = ("limit", "since", "generic_search_term", "room_types", "include_all_networks", "third_party_instance_id", "for_federation", "server")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    GENERIC_SEARCH_TERM_FIELD_NUMBER: _ClassVar[int]
    ROOM_TYPES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_ALL_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    THIRD_PARTY_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    FOR_FEDERATION_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    limit: int
    since: str
    generic_search_term: str
    room_types: RoomTypeFilter
    include_all_networks: bool
    third_party_instance_id: str
    for_federation: bool
    server: str
    def __init__(self, limit: _Optional[int] = ..., since: _Optional[str] = ..., generic_search_term: _Optional[str] = ..., room_types: _Optional[_Union[RoomTypeFilter, _Mapping]] = ..., include_all_networks: _Optional[bool] = ..., third_party_instance_id: _Optional[str] = ..., for_federation: _Optional[bool] = ..., server: _Optional[str] = ...) -> None: ...

class PublicRoom(_message.Message):
    __slots__ = ("room_id", "num_joined_members", "world_readable", "guest_can_join", "name", "topic", "canonical_alias", "avatar_url", "join_rule", "room_type")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_JOINED_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    WORLD_READABLE_FIELD_NUMBER: _ClassVar[int]
    GUEST_CAN_JOIN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_ALIAS_FIELD_NUMBER: _ClassVar[int]
    AVATAR_URL_FIELD_NUMBER: _ClassVar[int]
    JOIN_RULE_FIELD_NUMBER: _ClassVar[int]
    ROOM_TYPE_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    num_joined_members: int
    world_readable: bool
    guest_can_join: bool
    name: str
    topic: str
    canonical_alias: str
    avatar_url: str
    join_rule: str
    room_type: str
    def __init__(self, room_id: _Optional[str] = ..., num_joined_members: _Optional[int] = ..., world_readable: _Optional[bool] = ..., guest_can_join: _Optional[bool] = ..., name: _Optional[str] = ..., topic: _Optional[str] = ..., canonical_alias: _Optional[str] = ..., avatar_url: _Optional[str] = ..., join_rule: _Optional[str] = ..., room_type: _Optional[str] = ...) -> None: ...

class QueryPublicRoomsResponse(_message.Message):
    __slots__ = ("chunk", "next_batch", "prev_batch", "total_room_count_estimate", "response_json")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    NEXT_BATCH_FIELD_NUMBER: _ClassVar[int]
    PREV_BATCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROOM_COUNT_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    chunk: _containers.RepeatedCompositeFieldContainer[PublicRoom]
    next_batch: str
    prev_batch: str
    total_room_count_estimate: int
    response_json: bytes
    def __init__(self, chunk: _Optional[_Iterable[_Union[PublicRoom, _Mapping]]] = ..., next_batch: _Optional[str] = ..., prev_batch: _Optional[str] = ..., total_room_count_estimate: _Optional[int] = ..., response_json: _Optional[bytes] = ...) -> None: ...

class QueryHierarchyRequest(_message.Message):
    __slots__ = ("room_id", "suggested_only", "as_server")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_ONLY_FIELD_NUMBER: _ClassVar[int]
    AS_SERVER_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    suggested_only: bool
    as_server: str
    def __init__(self, room_id: _Optional[str] = ..., suggested_only: _Optional[bool] = ..., as_server: _Optional[str] = ...) -> None: ...

class QueryHierarchyResponse(_message.Message):
    __slots__ = ("response_json",)
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    response_json: bytes
    def __init__(self, response_json: _Optional[bytes] = ...) -> None: ...

class QueryRoomsOfUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class QueryRoomsOfUserResponse(_message.Message):
    __slots__ = ("room_ids",)
    ROOM_IDS_FIELD_NUMBER: _ClassVar[int]
    room_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, room_ids: _Optional[_Iterable[str]] = ...) -> None: ...
