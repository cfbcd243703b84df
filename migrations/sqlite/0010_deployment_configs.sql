-- The deployment configuration a plan's configure step stored per machine: the storage layout
-- and the network configuration the plan resolved (JSON, with their digests), and where they
-- came from ("fleet file", or "clone of NAME"). The planner compares the digests with the
-- fleet file's; the deployment reads the configuration. One row per machine, keyed by its id,
-- deleted with it. Keep in step with ../postgres/0010.
CREATE TABLE deployment_configs (
    machine_id      BIGINT  PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    layout          TEXT,
    layout_digest   TEXT,
    network         TEXT,
    network_digest  TEXT,
    origin          TEXT    NOT NULL,
    stored_at       BIGINT  NOT NULL
);
