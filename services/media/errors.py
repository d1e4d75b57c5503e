"""The errors the media service reports (typed gRPC statuses, see the proto)."""

from __future__ import annotations

import grpc

from mxfed.service_errors import ServiceError


class MediaNotFound(ServiceError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_FOUND"


class NotYetUploaded(ServiceError):
    status = grpc.StatusCode.NOT_FOUND
    errcode = "M_NOT_YET_UPLOADED"


class UploadTooLarge(ServiceError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    errcode = "M_TOO_LARGE"


class ContentTooLarge(ServiceError):
    """Too large to serve, fetch from a remote, or thumbnail."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    errcode = "M_TOO_LARGE"


class CannotOverwrite(ServiceError):
    status = grpc.StatusCode.ALREADY_EXISTS
    errcode = "M_CANNOT_OVERWRITE_MEDIA"


class UploadForbidden(ServiceError):
    status = grpc.StatusCode.PERMISSION_DENIED
    errcode = "M_FORBIDDEN"


class LimitExceeded(ServiceError):
    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    errcode = "M_LIMIT_EXCEEDED"


class CannotThumbnail(ServiceError):
    status = grpc.StatusCode.FAILED_PRECONDITION
    errcode = "M_UNKNOWN"


class RemoteFailed(ServiceError):
    """The media's server failed the fetch or could not be reached (not retried by gRPC)."""

    status = grpc.StatusCode.ABORTED
    errcode = "M_UNKNOWN"


class StoredContentDamaged(ServiceError):
    """A stored file is not what its row says (size); the stream is cut short."""

    status = grpc.StatusCode.DATA_LOSS
    errcode = "M_UNKNOWN"
