-- Secrets the controllers keep for a machine (a BMC password its enlistment reported), in the
-- store so that every controller on the database can use them, encrypted with the key every
-- controller is given (XChaCha20-Poly1305; see src/store/secret_box.rs): the nonce and the
-- ciphertext with its tag in hex, and the id of the key that sealed them (the first 8 bytes of
-- its SHA-256, in hex), so that a controller with another key can say so. Never the secret in
-- plain text. One row per machine and purpose, deleted with the machine. Keep in step with
-- ../postgres/0017. (0016 belongs to another change.)
CREATE TABLE secrets (
    machine_id  BIGINT  NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    purpose     TEXT    NOT NULL,
    nonce       TEXT    NOT NULL,
    ciphertext  TEXT    NOT NULL,
    key_id      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (machine_id, purpose)
);
