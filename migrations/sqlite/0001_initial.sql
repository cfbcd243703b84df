-- fleet's first schema, SQLite flavour. Keep in step with ../postgres/0001_initial.sql:
-- the store sends one SQL text to both, so only TEXT and BIGINT columns (booleans as 0/1,
-- times as Unix milliseconds, JSON as TEXT). Only the autoincrement ids are spelled differently.

CREATE TABLE machines (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL UNIQUE,
    status           TEXT    NOT NULL,
    previous_status  TEXT,
    locked           BIGINT  NOT NULL DEFAULT 0,
    power            TEXT    NOT NULL DEFAULT 'unknown',
    owner            TEXT,
    commissioned     BIGINT  NOT NULL DEFAULT 0,
    deployed_os      TEXT,
    generation       BIGINT  NOT NULL DEFAULT 1,
    status_reason    TEXT,
    status_since     BIGINT  NOT NULL,
    last_heard       BIGINT,
    arch             TEXT,
    power_type       TEXT    NOT NULL DEFAULT 'unconfigured',
    power_params     TEXT    NOT NULL DEFAULT '{}',
    bmc_address      TEXT,
    image            TEXT,
    tags             TEXT    NOT NULL DEFAULT '[]',
    cpus             BIGINT,
    cpu_model        TEXT,
    cpu_speed_mhz    BIGINT,
    memory_mib       BIGINT,
    facts            TEXT    NOT NULL DEFAULT '{}',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);

CREATE INDEX machines_bmc_address ON machines (bmc_address);

CREATE TABLE interfaces (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  BIGINT  NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    mac         TEXT    NOT NULL UNIQUE,
    link_up     BIGINT,
    speed_mbps  BIGINT,
    driver      TEXT
);

CREATE INDEX interfaces_machine ON interfaces (machine_id);

CREATE TABLE disks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  BIGINT  NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    model       TEXT,
    serial      TEXT,
    id_path     TEXT,
    size_bytes  BIGINT  NOT NULL,
    block_size  BIGINT,
    rotational  BIGINT
);

CREATE INDEX disks_machine ON disks (machine_id);

CREATE TABLE script_results (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  BIGINT  NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    run_id      TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    exit_code   BIGINT,
    runtime_ms  BIGINT,
    stdout      TEXT    NOT NULL DEFAULT '',
    stderr      TEXT    NOT NULL DEFAULT '',
    results     TEXT    NOT NULL DEFAULT '{}',
    at          BIGINT  NOT NULL
);

CREATE INDEX script_results_machine ON script_results (machine_id, id);

CREATE TABLE leases (
    mac         TEXT    PRIMARY KEY,
    ip          TEXT    NOT NULL UNIQUE,
    subnet      TEXT    NOT NULL,
    hostname    TEXT,
    machine     TEXT,
    expires_at  BIGINT  NOT NULL
);

CREATE TABLE plans (
    id          TEXT    PRIMARY KEY,
    created_at  BIGINT  NOT NULL,
    status      TEXT    NOT NULL,
    body        TEXT    NOT NULL
);

CREATE TABLE locks (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    since       BIGINT  NOT NULL,
    heartbeat   BIGINT  NOT NULL
);

CREATE TABLE settings (
    key         TEXT    PRIMARY KEY,
    value       TEXT    NOT NULL
);

-- Append-only. `machine` is the machine's NAME and has no foreign key, so that deleting a
-- machine keeps its history.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           BIGINT  NOT NULL,
    machine      TEXT,
    kind         TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT,
    from_status  TEXT,
    to_status    TEXT,
    reason       TEXT,
    detail       TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX events_machine ON events (machine, id);
