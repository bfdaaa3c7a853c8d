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
