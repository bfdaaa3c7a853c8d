-- majordomo schema v2: a database the reference gateway created gets v1's
-- columns (version 1's CREATE TABLE IF NOT EXISTS left its tables as they
-- were). On a database v1 created, every statement here is a no-op.
-- Each ADD COLUMN with a constant default changes only the catalogue (no
-- table rewrite); the reference's INT token counts become BIGINT (the
-- request log is written with binary COPY, which takes no INT for a BIGINT),
-- which rewrites llm_requests once, under its lock, before the gateway
-- starts listening. The reference's rows were priced and counted in full, so
-- they get true for price_found and usage_complete; new rows get false
-- until the gateway says otherwise.

ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS key_hint VARCHAR(32);

ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS time_to_first_byte_ms INT;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS reasoning_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS price_found BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE llm_requests ALTER COLUMN price_found SET DEFAULT false;
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS usage_complete BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE llm_requests ALTER COLUMN usage_complete SET DEFAULT false;

DO $$
BEGIN
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
