-- The controllers sharing this store (`fleet controllers`): one row per controller (its id is
-- kept in its state directory), rewritten by its heartbeat.
CREATE TABLE controllers (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    api_url TEXT NOT NULL,
    boot_url TEXT NOT NULL,
    networks TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);
