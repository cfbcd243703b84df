-- The power outbox: a life-cycle change that decides a power command stores the command in the
-- same transaction (`power_pending`, JSON: command, follow-up, actor), with when it was decided or
-- last worked on (`power_pending_at`, Unix ms). The command's runner keeps `power_pending_at`
-- fresh while it runs and clears both when it is done; the leader carries out any left stale
-- (a controller killed between the decision and the command), after a restart or a takeover too.
ALTER TABLE machines ADD COLUMN power_pending TEXT;
ALTER TABLE machines ADD COLUMN power_pending_at BIGINT;
CREATE INDEX machines_power_pending ON machines (power_pending_at) WHERE power_pending IS NOT NULL;
