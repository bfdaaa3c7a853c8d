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
