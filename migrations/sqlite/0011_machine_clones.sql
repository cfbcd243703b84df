-- Clones recorded by `fleet clone` (issue 13), one row per destination, keyed by its id, so the
-- record goes with its machine (ON DELETE CASCADE) and a machine re-added under the same name
-- starts afresh. The destination keeps the source's storage and/or interfaces until the fleet
-- file says otherwise. Keep in step with ../postgres/0011.
-- source:     the name of the machine cloned from (it may be deleted later: a name, not an id).
-- storage:    1 if its storage layout was cloned; interfaces: 1 if its interfaces were.
-- disk_map:   JSON object, source disk name -> destination disk name ({} without storage).
-- interface_map: JSON object, source interface name -> destination interface name.
-- actor:      the operator token's name that cloned; at: when, Unix ms.
CREATE TABLE machine_clones (
    machine_id     BIGINT  PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    source         TEXT    NOT NULL,
    storage        BIGINT  NOT NULL,
    interfaces     BIGINT  NOT NULL,
    disk_map       TEXT    NOT NULL DEFAULT '{}',
    interface_map  TEXT    NOT NULL DEFAULT '{}',
    actor          TEXT    NOT NULL,
    at             BIGINT  NOT NULL
);
