-- Integers are 64-bit everywhere (SQLite's INTEGER is, and the code reads and writes i64), but
-- four PostgreSQL columns were made INTEGER (32-bit): a plan amount above 2^31 - 1 cents, which
-- SQLite stores, failed here with "integer out of range". Widened to BIGINT. Found by
-- tests/schema.rs, which compares the schemas both backends' migrations build.
ALTER TABLE plans ALTER COLUMN amount TYPE BIGINT;
ALTER TABLE webhook_deliveries
    ALTER COLUMN attempt TYPE BIGINT,
    ALTER COLUMN response_status TYPE BIGINT,
    ALTER COLUMN latency_ms TYPE BIGINT;
