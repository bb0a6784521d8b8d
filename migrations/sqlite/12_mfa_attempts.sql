-- Second-factor checks of a signed-in user (enabling, disabling MFA): at most 5 wrong codes
-- per 15-minute window, counted before a code is evaluated (a conditional UPDATE on this row),
-- so parallel guesses cannot pass the limit. A right code clears the count.
CREATE TABLE mfa_attempts (
    user_id           TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_started_at TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0
);
