-- The call-back credential of a deployment (issue 14): the SHA-256 of the secret minted when
-- the deployment was fetched (a later fetch replaces it), the run it was minted for, and where
-- its one call came from once it was used. Keep in step with ../postgres/0014.
ALTER TABLE machine_state ADD COLUMN callback_hash TEXT;
ALTER TABLE machine_state ADD COLUMN callback_run TEXT;
ALTER TABLE machine_state ADD COLUMN callback_used_from TEXT;
