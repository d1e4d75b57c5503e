from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ThumbnailMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THUMBNAIL_METHOD_UNSPECIFIED: _ClassVar[ThumbnailMethod]
    THUMBNAIL_METHOD_SCALE: _ClassVar[ThumbnailMethod]
    THUMBNAIL_METHOD_CROP: _ClassVar[ThumbnailMethod]
THUMBNAIL_METHOD_UNSPECIFIED: ThumbnailMethod
THUMBNAIL_METHOD_SCALE: ThumbnailMethod
THUMBNAIL_METHOD_CROP: ThumbnailMethod

class UploadStart(_message.Message):
    __slots__ = ("uploader", "content_type", "upload_name", "media_id")
    UPLOADER_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    uploader: str
    content_type: str
    upload_name: str
    media_id: str
    def __init__(self, uploader: _Optional[str] = ..., content_type: _Optional[str] = ..., upload_name: _Optional[str] = ..., media_id: _Optional[str] = ...) -> None: ...

class PerformUploadRequest(_message.Message):
    __slots__ = ("start", "data")
    START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    start: UploadStart
    data: bytes
    def __init__(self, start: _Optional[_Union[UploadStart, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PerformUploadResponse(_message.Message):
    __slots__ = ("mxc_uri", "media_id", "size", "sha256", "content_type")
    MXC_URI_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    mxc_uri: str
    media_id: str
    size: int
    sha256: str
    content_type: str
    def __init__(self, mxc_uri: _Optional[str] = ..., media_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., content_type: _Optional[str] = ...) -> None: ...

class PerformCreateMediaRequest(_message.Message):
    __slots__ = ("uploader",)
    UPLOADER_FIELD_NUMBER: _ClassVar[int]
    uploader: str
    def __init__(self, uploader: _Optional[str] = ...) -> None: ...

class PerformCreateMediaResponse(_message.Message):
    __slots__ = ("mxc_uri", "media_id", "unused_expires_at")
    MXC_URI_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    UNUSED_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    mxc_uri: str
    media_id: str
    unused_expires_at: int
    def __init__(self, mxc_uri: _Optional[str] = ..., media_id: _Optional[str] = ..., unused_expires_at: _Optional[int] = ...) -> None: ...

class QueryMediaRequest(_message.Message):
    __slots__ = ("server_name", "media_id")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    media_id: str
    def __init__(self, server_name: _Optional[str] = ..., media_id: _Optional[str] = ...) -> None: ...

class QueryMediaResponse(_message.Message):
    __slots__ = ("found", "uploaded", "remote", "content_type", "content_disposition", "upload_name", "size", "sha256", "uploader", "created_ts")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    UPLOADER_FIELD_NUMBER: _ClassVar[int]
    CREATED_TS_FIELD_NUMBER: _ClassVar[int]
    found: bool
    uploaded: bool
    remote: bool
    content_type: str
    content_disposition: str
    upload_name: str
    size: int
    sha256: str
    uploader: str
    created_ts: int
    def __init__(self, found: _Optional[bool] = ..., uploaded: _Optional[bool] = ..., remote: _Optional[bool] = ..., content_type: _Optional[str] = ..., content_disposition: _Optional[str] = ..., upload_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., uploader: _Optional[str] = ..., created_ts: _Optional[int] = ...) -> None: ...

class StreamContentRequest(_message.Message):
    __slots__ = ("server_name", "media_id", "timeout_ms", "allow_remote")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REMOTE_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    media_id: str
    timeout_ms: int
    allow_remote: bool
    def __init__(self, server_name: _Optional[str] = ..., media_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., allow_remote: _Optional[bool] = ...) -> None: ...

class StreamThumbnailRequest(_message.Message):
    __slots__ = ("server_name", "media_id", "width", "height", "method", "animated", "timeout_ms", "allow_remote")
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MEDIA_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ANIMATED_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_REMOTE_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    media_id: str
    width: int
    height: int
    method: ThumbnailMethod
    animated: bool
    timeout_ms: int
    allow_remote: bool
    def __init__(self, server_name: _Optional[str] = ..., media_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., method: _Optional[_Union[ThumbnailMethod, str]] = ..., animated: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., allow_remote: _Optional[bool] = ...) -> None: ...

class ContentHead(_message.Message):
    __slots__ = ("content_type", "content_disposition", "size", "upload_name")
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DISPOSITION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_NAME_FIELD_NUMBER: _ClassVar[int]
    content_type: str
    content_disposition: str
    size: int
    upload_name: str
    def __init__(self, content_type: _Optional[str] = ..., content_disposition: _Optional[str] = ..., size: _Optional[int] = ..., upload_name: _Optional[str] = ...) -> None: ...

class ContentChunk(_message.Message):
    __slots__ = ("head", "data")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    head: ContentHead
    data: bytes
    def __init__(self, head: _Optional[_Union[ContentHead, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
