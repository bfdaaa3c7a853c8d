-- majordomo schema v1 (PostgreSQL 14+).
-- The three tables and their column names are those of the reference gateway
-- (api_keys, llm_requests, llm_requests_metadata_keys); types are widened where
-- the reference could fail an INSERT (long model names, token counts over 2^31).

CREATE TABLE IF NOT EXISTS api_keys (
    id                  UUID PRIMARY KEY,
    key_hash            VARCHAR(64) NOT NULL UNIQUE,   -- BLAKE3 of the whole key, hex
    key_hint            VARCHAR(32),                   -- mdm_sk_…abcd, for `keys list`
    name                VARCHAR(255) NOT NULL,
    description         TEXT,
    is_active           BOOLEAN NOT NULL DEFAULT true,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at          TIMESTAMPTZ,
    last_used_at        TIMESTAMPTZ,
    request_count       BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS idx_api_keys_hash ON api_keys(key_hash) WHERE is_active = true;

CREATE TABLE IF NOT EXISTS llm_requests (
    id                      UUID PRIMARY KEY,          -- the gateway's request id (UUIDv7)
    majordomo_api_key_id    UUID REFERENCES api_keys(id),
    provider_api_key_hash   VARCHAR(64),               -- BLAKE3 of the provider credential, never the credential
    provider_api_key_alias  VARCHAR(255),
    provider                VARCHAR(100) NOT NULL,
    model                   TEXT NOT NULL,
    request_path            TEXT NOT NULL,
    request_method          TEXT NOT NULL,
    requested_at            TIMESTAMPTZ NOT NULL,
    responded_at            TIMESTAMPTZ NOT NULL,
    response_time_ms        INT NOT NULL,
    time_to_first_byte_ms   INT,
    input_tokens            BIGINT NOT NULL DEFAULT 0,
    output_tokens           BIGINT NOT NULL DEFAULT 0,
    cached_tokens           BIGINT DEFAULT 0,
    cache_creation_tokens   BIGINT DEFAULT 0,
    reasoning_tokens        BIGINT NOT NULL DEFAULT 0,
    input_cost              NUMERIC(20, 10) NOT NULL DEFAULT 0,
    output_cost             NUMERIC(20, 10) NOT NULL DEFAULT 0,
    total_cost              NUMERIC(20, 10) NOT NULL DEFAULT 0,
    price_found             BOOLEAN NOT NULL DEFAULT false,  -- false: costs are 0 because the model is unpriced
    usage_complete          BOOLEAN NOT NULL DEFAULT false,  -- false: tokens are partial or unknown
    status_code             INT NOT NULL,
    error_message           TEXT,
    raw_metadata            JSONB,
    indexed_metadata        JSONB DEFAULT '{}',
    request_body            TEXT,
    response_body           TEXT,
    created_at              TIMESTAMPTZ DEFAULT now(),
    body_s3_key             TEXT,
    model_alias_found       BOOLEAN GENERATED ALWAYS AS (price_found) STORED
);

CREATE INDEX IF NOT EXISTS idx_llm_requests_majordomo_key_time ON llm_requests(majordomo_api_key_id, requested_at DESC);
CREATE INDEX IF NOT EXISTS idx_llm_requests_provider_key_time ON llm_requests(provider_api_key_hash, requested_at DESC);
CREATE INDEX IF NOT EXISTS idx_llm_requests_indexed_metadata_gin ON llm_requests USING GIN (indexed_metadata);

CREATE TABLE IF NOT EXISTS llm_requests_metadata_keys (
    majordomo_api_key_id    UUID NOT NULL REFERENCES api_keys(id),
    key_name                VARCHAR(255) NOT NULL,
    display_name            VARCHAR(255),
    key_type                VARCHAR(50) DEFAULT 'string',
    is_required             BOOLEAN DEFAULT false,
    is_active               BOOLEAN NOT NULL DEFAULT false,
    activated_at            TIMESTAMPTZ,
    request_count           BIGINT NOT NULL DEFAULT 0,
    last_seen_at            TIMESTAMPTZ,
    hll_state               BYTEA,
    approx_cardinality      INT NOT NULL DEFAULT 0,
    hll_updated_at          TIMESTAMPTZ,
    created_at              TIMESTAMPTZ DEFAULT now(),
    PRIMARY KEY (majordomo_api_key_id, key_name)
);

CREATE INDEX IF NOT EXISTS idx_llm_requests_metadata_keys_active ON llm_requests_metadata_keys(majordomo_api_key_id) WHERE is_active = true;

-- majordomo schema v2: a database the reference gateway created gets v1's
-- columns (version 1's CREATE TABLE IF NOT EXISTS left its tables as they
-- were). On a database v1 created, every statement here is a no-op.
-- Each ADD COLUMN with a constant default changes only the catalogue (no
-- table rewrite); the reference's INT token counts become BIGINT (the
-- request log is written with binary COPY, which takes no INT for a BIGINT),
-- which rewrites llm_requests, under its lock, before the gateway starts
-- listening. The reference's rows keep whether they were priced (its
-- model_alias_found) and were counted in full (usage_complete true); new
-- rows get false until the gateway says otherwise.

ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS key_hint VARCHAR(32);

ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS time_to_first_byte_ms INT;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS price_found BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE llm_requests ALTER COLUMN price_found SET DEFAULT false;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS usage_complete BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE llm_requests ALTER COLUMN usage_complete SET DEFAULT false;

DO $$
BEGIN
    -- The reference kept whether a request was priced in model_alias_found,
    -- a plain column: price_found takes its value, and model_alias_found
    -- becomes what v1 has, a column generated from price_found.
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'llm_requests'
          AND column_name = 'model_alias_found' AND is_generated = 'NEVER'
    ) THEN
        UPDATE llm_requests SET price_found = model_alias_found;
        ALTER TABLE llm_requests DROP COLUMN model_alias_found;
        ALTER TABLE llm_requests
            ADD COLUMN model_alias_found BOOLEAN GENERATED ALWAYS AS (price_found) STORED;
    END IF;
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'llm_requests'
          AND column_name = 'input_tokens' AND data_type = 'integer'
    ) THEN
        ALTER TABLE llm_requests
            ALTER COLUMN model TYPE TEXT,
            ALTER COLUMN input_tokens TYPE BIGINT,
            ALTER COLUMN output_tokens TYPE BIGINT,
            ALTER COLUMN cached_tokens TYPE BIGINT,
            ALTER COLUMN cache_creation_tokens TYPE BIGINT;
    END IF;
END $$;

-- majordomo schema v3: a database the reference gateway created keeps its
-- costs as NUMERIC(12, 8). PostgreSQL then rounds each cost column to 8
-- places on its own, so total_cost could differ from input + output, and a
-- cost of $10 000 or more is out of range (the row would be refused). They
-- become v1's NUMERIC(20, 10) (a table rewrite, under its lock, before the
-- gateway starts listening). On a database v1 created this is a no-op.

DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'llm_requests'
          AND column_name = 'total_cost' AND numeric_scale IS DISTINCT FROM 10
    ) THEN
        ALTER TABLE llm_requests
            ALTER COLUMN input_cost TYPE NUMERIC(20, 10),
            ALTER COLUMN output_cost TYPE NUMERIC(20, 10),
            ALTER COLUMN total_cost TYPE NUMERIC(20, 10);
    END IF;
END $$;

-- majordomo schema v4: background responses, billed once.
-- An OpenAI response created with "background": true is billed by the first
-- request that sees its usage: a GET that retrieves it finished, a cancel,
-- or the POST that streamed it to its end. Any later one is logged unbilled,
-- whichever gateway process (a replica, or one started after a restart or
-- an upgrade) serves it. The first process to insert the response id bills
-- it; request_id is the row that carries its usage.
CREATE TABLE IF NOT EXISTS majordomo_billed_responses (
    response_id  TEXT PRIMARY KEY,
    request_id   UUID NOT NULL,
    billed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
