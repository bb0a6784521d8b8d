-- Idempotency-Key (SPEC §1): a POST carrying the header is executed once per (caller, key) for
-- 24 hours. The primary key decides the race between concurrent duplicates on every node: the
-- request whose insert succeeds runs (`in_progress`), the others are refused or replayed. Once
-- answered the row is `done` with the answer to replay: status, the kept headers (JSON) and the
-- body sealed with the master key (it may hold a secret shown once, e.g. a new API key); no body
-- when it was over 1 MiB. `fingerprint` is SHA-256 of method, path and body. Rows past
-- `expires_at` are ignored, replaced and deleted by a periodic cleanup.
CREATE TABLE idempotency (
    caller          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    fingerprint     TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('in_progress', 'done')),
    status          INTEGER,
    headers         TEXT,
    sealed_body     TEXT,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    PRIMARY KEY (caller, idempotency_key)
);
CREATE INDEX idempotency_expires_idx ON idempotency (expires_at);
