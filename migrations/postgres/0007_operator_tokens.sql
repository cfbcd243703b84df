-- Operator tokens: several named ones, each with a role, kept as the SHA-256 of the secret
-- (never the secret). Keep in step with ../sqlite/0007.
-- name:         the token's name; every event an operator call causes has it as its actor. A
--               revoked token keeps its row (and its name) for the audit: a name is never reused.
-- role:         admin (everything) or read-only (GET only).
-- secret_hash:  hex SHA-256 of the secret (32 random bytes, hex): a fast hash suffices for a
--               secret nobody can guess (ARCHITECTURE.md).
-- created_at, last_used_at (to the minute), expires_at, revoked_at: Unix ms; NULL: never.
-- The plain `operator_token` setting of older stores is moved here by the controller at start
-- (it hashes in Rust), not by this migration.
CREATE TABLE operator_tokens (
    name          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    secret_hash   TEXT    NOT NULL UNIQUE,
    created_at    BIGINT  NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);
