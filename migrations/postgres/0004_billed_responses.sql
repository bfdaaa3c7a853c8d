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
