-- majordomo schema v4 (SQLite): background responses, billed once (see the
-- PostgreSQL script).
CREATE TABLE IF NOT EXISTS majordomo_billed_responses (
    response_id  TEXT PRIMARY KEY,
    request_id   TEXT NOT NULL,
    billed_at    TEXT NOT NULL
);
