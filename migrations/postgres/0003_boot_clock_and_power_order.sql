-- The boot clock and the order of power commands.
-- boot_started: when the latest power command that boots the machine (on, cycle) ran (Unix ms);
--   the boot limit runs from it to the machine's first call (last_heard after it).
-- power_decided: the generation of the latest decision that asked for a power command; a queued
--   command made for an older generation has been overtaken by a newer decision and is dropped.
ALTER TABLE machines ADD COLUMN boot_started BIGINT;
ALTER TABLE machines ADD COLUMN power_decided BIGINT NOT NULL DEFAULT 0;
