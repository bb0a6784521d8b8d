-- Second-factor codes at the MFA step of a login, per user (not per `mfa_token`: a new login
-- with the password hands out a new token): at most 10 per 15-minute window, counted before a
-- code is evaluated (a conditional UPDATE on this row), so parallel guesses cannot pass the
-- limit. A right code clears the count. Kept apart from `mfa_attempts` (a signed-in user's
-- checks), so failed logins do not use up the owner's checks and the other way round.
CREATE TABLE mfa_login_attempts (
    user_id           TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_started_at TEXT NOT NULL,
    attempts          BIGINT NOT NULL DEFAULT 0
);
