-- DHCP leases of several controllers on one database (issue 16). The batch writer
-- (`Store::write_lease_batch`) never deletes or overwrites a row of another MAC whose lease has
-- not expired: the UNIQUE address decides, with an upsert that takes an address only from the
-- same MAC or from an expired lease (judged by the database's clock, `fleet_now_ms()`).
-- `controller` names the controller that wrote the row, `updated_at` (the database's clock, Unix
-- ms) when: each controller reads the rows the others changed since its last read, so that its
-- offers avoid the addresses they hold.
ALTER TABLE leases ADD COLUMN controller TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX leases_updated_at ON leases (updated_at);
