-- DHCP leases: who wrote each row and when (see migrations/postgres/0020). On SQLite one
-- controller uses the store, but the columns and the batch writer are the same.
ALTER TABLE leases ADD COLUMN controller TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX leases_updated_at ON leases (updated_at);
