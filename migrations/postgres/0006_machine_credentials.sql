-- Machine credentials that cannot be lifted (issue 12). Keep in step with ../sqlite/0006.
-- The machine's permanent API token (on its kernel command line, readable by anyone fetching its
-- boot script) is gone: every token and secret below is kept only as its SHA-256 (hex).
-- run_token_hash:         the token of the machine's current run (`run`), handed out once by the
--                         exchange of a boot secret or a registration secret, or by enlistment.
-- run_ended_at:           when the current run ended (its final signal), Unix ms; NULL: not yet.
-- boot_secrets:           the one-shot boot secrets handed out in iPXE scripts for the machine's
--                         current boot, space-separated, oldest first (at most 16).
-- boot_exchanged_from:    where the current boot's one exchange came from (NULL: not yet;
--                         `overflow`: more boot scripts were served than one boot fetches).
-- boot_epoch:             the machine's boot_started when its boot secret was exchanged: a later
--                         power command (a new boot_started) starts a new boot.
-- registration_hash:      the one-shot registration secret of a machine added live.
-- registration_expires:   when it expires, Unix ms.
-- registration_used_from: where it was exchanged from (NULL: not yet).
ALTER TABLE machine_state DROP COLUMN token;
ALTER TABLE machine_state ADD COLUMN run_token_hash TEXT;
ALTER TABLE machine_state ADD COLUMN run_ended_at BIGINT;
ALTER TABLE machine_state ADD COLUMN boot_secrets TEXT;
ALTER TABLE machine_state ADD COLUMN boot_exchanged_from TEXT;
ALTER TABLE machine_state ADD COLUMN boot_epoch BIGINT;
ALTER TABLE machine_state ADD COLUMN registration_hash TEXT;
ALTER TABLE machine_state ADD COLUMN registration_expires BIGINT;
ALTER TABLE machine_state ADD COLUMN registration_used_from TEXT;
CREATE INDEX machine_state_run_token ON machine_state (run_token_hash);
