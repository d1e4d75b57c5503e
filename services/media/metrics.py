"""Prometheus metrics of the media service (prefix ``mxfed_media_``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPLOADS = Counter(
    "mxfed_media_uploads_total",
    "Local uploads, by outcome (stored, too_large, refused)",
    ["outcome"],
)
UPLOADED_BYTES = Counter("mxfed_media_uploaded_bytes_total", "Bytes of local uploads stored")
SERVED = Counter(
    "mxfed_media_served_total",
    "Content and thumbnails streamed, by kind (content, thumbnail) and origin (local, remote)",
    ["kind", "origin"],
)
SERVED_BYTES = Counter("mxfed_media_served_bytes_total", "Bytes streamed to callers")
REMOTE_FETCHES = Counter(
    "mxfed_media_remote_fetches_total",
    "Outbound fetches of remote media, by kind and outcome (fetched, fallback, failed)",
    ["kind", "outcome"],
)
REMOTE_FETCH_SECONDS = Histogram(
    "mxfed_media_remote_fetch_seconds", "Time to fetch one remote media or thumbnail", ["kind"]
)
REMOTE_CACHE_BYTES = Gauge(
    "mxfed_media_remote_cache_bytes", "Bytes of remote media and thumbnails cached"
)
THUMBNAILS_MADE = Counter(
    "mxfed_media_thumbnails_made_total", "Thumbnails rendered, by fate (kept, not_kept)", ["fate"]
)
WAITING_FOR_UPLOAD = Gauge(
    "mxfed_media_waiting_for_upload", "Downloads waiting for reserved media's content"
)
REMOTE_FETCH_WAITERS = Gauge(
    "mxfed_media_remote_fetch_waiters",
    "Callers waiting for a remote fetch in progress (one request serves them all)",
)
