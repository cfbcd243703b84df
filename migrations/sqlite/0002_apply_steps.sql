-- The executor's progress, one row per step of each machine of an apply (owned by src/apply,
-- written through src/store/apply.rs). The apply itself is a row of `plans` (id, status, body =
-- the approved plan). A step is marked `started` with the machine's generation before its
-- action runs, so that after a crash the executor can tell whether the action committed
-- (the generation moved) and never runs a step twice.
CREATE TABLE apply_steps (
    apply_id    TEXT    NOT NULL,
    machine     TEXT    NOT NULL,
    step        BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    generation  BIGINT,
    reason      TEXT,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (apply_id, machine, step)
);
