-- The media service's tables (schema "media"). Content lives in the
-- content-addressed file store; these rows say which media id names which file.

-- Our own media: reserved (content_sha256 NULL until uploaded) or uploaded.
CREATE TABLE local_media (
    media_id text PRIMARY KEY,
    uploader text NOT NULL DEFAULT '',
    created_ts bigint NOT NULL,
    -- A reservation lapses at this time if no content came (async upload).
    unused_expires_ts bigint,
    uploaded_ts bigint,
    content_type text,       -- as declared (validated); NULL: none declared
    upload_name text,
    size bigint,
    content_sha256 text,
    head bytea               -- the first bytes, for sniffing and the disposition
);
CREATE INDEX local_media_pending ON local_media (uploader, unused_expires_ts)
    WHERE content_sha256 IS NULL;

-- Other servers' media we fetched, a cache bounded by media_remote_cache_max_bytes.
CREATE TABLE remote_media (
    server_name text NOT NULL,
    media_id text NOT NULL,
    content_type text,
    upload_name text,
    size bigint NOT NULL,
    content_sha256 text NOT NULL,
    head bytea NOT NULL,
    fetched_ts bigint NOT NULL,
    last_access_ts bigint NOT NULL,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX remote_media_access ON remote_media (last_access_ts);

-- Thumbnails we made, keyed by the content they were made from (so the same
-- bytes uploaded twice share them).
CREATE TABLE thumbnails (
    source_sha256 text NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    method text NOT NULL,
    animated boolean NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL,
    content_sha256 text NOT NULL,
    created_ts bigint NOT NULL,
    PRIMARY KEY (source_sha256, width, height, method, animated)
);

-- Thumbnails of other servers' media, as they served them (same cache bound).
CREATE TABLE remote_thumbnails (
    server_name text NOT NULL,
    media_id text NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    method text NOT NULL,
    animated boolean NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL,
    content_sha256 text NOT NULL,
    fetched_ts bigint NOT NULL,
    last_access_ts bigint NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
CREATE INDEX remote_thumbnails_access ON remote_thumbnails (last_access_ts);
