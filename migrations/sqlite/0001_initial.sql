-- majordomo schema v1 (SQLite). Same tables and columns as PostgreSQL:
-- UUIDs and timestamps (RFC 3339, UTC) as TEXT, money as exact decimal TEXT,
-- JSON as TEXT.

CREATE TABLE IF NOT EXISTS api_keys (
    id                  TEXT PRIMARY KEY,
    key_hash            TEXT NOT NULL UNIQUE,
    key_hint            TEXT,
    name                TEXT NOT NULL,
    description         TEXT,
    is_active           INTEGER NOT NULL DEFAULT 1,
    created_at          TEXT NOT NULL,
    revoked_at          TEXT,
    last_used_at        TEXT,
    request_count       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS llm_requests (
    id                      TEXT PRIMARY KEY,
    majordomo_api_key_id    TEXT REFERENCES api_keys(id),
    provider_api_key_hash   TEXT,
    provider_api_key_alias  TEXT,
    provider                TEXT NOT NULL,
    model                   TEXT NOT NULL,
    request_path            TEXT NOT NULL,
    request_method          TEXT NOT NULL,
    requested_at            TEXT NOT NULL,
    responded_at            TEXT NOT NULL,
    response_time_ms        INTEGER NOT NULL,
    time_to_first_byte_ms   INTEGER,
    input_tokens            INTEGER NOT NULL DEFAULT 0,
    output_tokens           INTEGER NOT NULL DEFAULT 0,
    cached_tokens           INTEGER DEFAULT 0,
    cache_creation_tokens   INTEGER DEFAULT 0,
    reasoning_tokens        INTEGER NOT NULL DEFAULT 0,
    input_cost              TEXT NOT NULL DEFAULT '0',
    output_cost             TEXT NOT NULL DEFAULT '0',
    total_cost              TEXT NOT NULL DEFAULT '0',
    price_found             INTEGER NOT NULL DEFAULT 0,
    usage_complete          INTEGER NOT NULL DEFAULT 0,
    status_code             INTEGER NOT NULL,
    error_message           TEXT,
    raw_metadata            TEXT,
    indexed_metadata        TEXT DEFAULT '{}',
    request_body            TEXT,
    response_body           TEXT,
    created_at              TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    body_s3_key             TEXT,
    model_alias_found       INTEGER GENERATED ALWAYS AS (price_found) VIRTUAL
);

CREATE INDEX IF NOT EXISTS idx_llm_requests_majordomo_key_time ON llm_requests(majordomo_api_key_id, requested_at DESC);

CREATE TABLE IF NOT EXISTS llm_requests_metadata_keys (
    majordomo_api_key_id    TEXT NOT NULL REFERENCES api_keys(id),
    key_name                TEXT NOT NULL,
    display_name            TEXT,
    key_type                TEXT DEFAULT 'string',
    is_required             INTEGER DEFAULT 0,
    is_active               INTEGER NOT NULL DEFAULT 0,
    activated_at            TEXT,
    request_count           INTEGER NOT NULL DEFAULT 0,
    last_seen_at            TEXT,
    hll_state               BLOB,
    approx_cardinality      INTEGER NOT NULL DEFAULT 0,
    hll_updated_at          TEXT,
    created_at              TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (majordomo_api_key_id, key_name)
);
