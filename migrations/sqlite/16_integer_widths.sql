-- Nothing to change here: SQLite's INTEGER is 64-bit already. PostgreSQL widens four INTEGER
-- columns to BIGINT in its migration 15 (plans.amount; webhook_deliveries.attempt,
-- response_status, latency_ms). This file keeps both lists of migrations the same.
SELECT 1;
