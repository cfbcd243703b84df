-- What the machine API keeps per machine, in a table of its own instead of `settings` keys
-- (`machine-token/NAME`, `machine-run/NAME`, `machine-erase/NAME`, which were never deleted).
-- One row per machine, keyed by its id, so it goes with its machine (ON DELETE CASCADE) and a
-- machine re-added under the same name starts afresh. Keep in step with ../sqlite/0004.
-- token:      the machine's own API token (on its kernel command line).
-- run:        the id of the run handed out with its latest instructions; run_role its role.
-- erase_mode: the disk erase (quick, secure, full) the latest release with erase asked for.
CREATE TABLE machine_state (
    machine_id  BIGINT  PRIMARY KEY REFERENCES machines (id) ON DELETE CASCADE,
    token       TEXT,
    run         TEXT,
    run_role    TEXT,
    erase_mode  TEXT
);

-- Move the settings of machines that exist. A run was kept as `RUN ROLE`; one without a space
-- was unreadable (no run) and is not moved, nor is an erase mode fleet does not know.
INSERT INTO machine_state (machine_id, token, run, run_role, erase_mode)
SELECT m.id,
       (SELECT s.value FROM settings s WHERE s.key = 'machine-token/' || m.name),
       (SELECT substr(s.value, 1, strpos(s.value, ' ') - 1) FROM settings s
         WHERE s.key = 'machine-run/' || m.name AND strpos(s.value, ' ') > 1),
       (SELECT trim(substr(s.value, strpos(s.value, ' ') + 1)) FROM settings s
         WHERE s.key = 'machine-run/' || m.name AND strpos(s.value, ' ') > 1),
       (SELECT s.value FROM settings s
         WHERE s.key = 'machine-erase/' || m.name AND s.value IN ('quick', 'secure', 'full'))
FROM machines m
WHERE EXISTS (SELECT 1 FROM settings s
              WHERE s.key IN ('machine-token/' || m.name, 'machine-run/' || m.name,
                              'machine-erase/' || m.name));

-- And drop them all, those of machines deleted long ago included.
DELETE FROM settings
WHERE substr(key, 1, 14) = 'machine-token/'
   OR substr(key, 1, 12) = 'machine-run/'
   OR substr(key, 1, 14) = 'machine-erase/';
