-- Keep in step with ../postgres/0022, which puts on the triggers that notify the other
-- controllers of lease and machine changes (LISTEN/NOTIFY). SQLite has one controller and no
-- notifications: nothing to do, but the version is recorded, so both backends stand at the same
-- migration (`fleet db backup`, `restore` and `migrate-to` copy only between equal schemas).
SELECT 1;
