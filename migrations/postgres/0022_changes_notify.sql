-- Changes pushed to the other controllers (issue 16, `store/changes.rs`): each controller's one
-- LISTEN connection hears these channels and wakes the reader concerned, which reads the table
-- again (a notification is a wake-up only; each reader also reads on a slow timer, so a lost
-- notification costs latency, never a change). PostgreSQL delivers notifications at commit,
-- once per distinct payload of a transaction. PostgreSQL only: on SQLite the one controller has
-- nobody to tell.

-- `fleet_leases`: DHCP leases written, one notification per writing controller (the payload is
-- the rows' `controller`), so that a controller skips its own writes and learns the others' at
-- once (`ForeignLeases` in `boot/dhcp/service.rs`). A batch's upsert fires both the INSERT
-- trigger (new rows) and the UPDATE one (rows taken over); a transition table may serve one
-- event only, hence two triggers. Deletes are not told: the others never learn those anyway.
CREATE FUNCTION fleet_leases_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    writer TEXT;
BEGIN
    FOR writer IN SELECT DISTINCT controller FROM written LOOP
        PERFORM pg_notify('fleet_leases', writer);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER leases_notify_insert AFTER INSERT ON leases
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_leases_notify();
CREATE TRIGGER leases_notify_update AFTER UPDATE ON leases
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_leases_notify();

-- `fleet_machines`: what DHCP knows machines by changed: a machine added or deleted, renamed or
-- given another boot MAC, its interfaces (their MACs) or its held addresses. Status and power
-- updates of `machines`, by far the most frequent writes, notify nothing (the row trigger's
-- WHEN is false for them).
CREATE FUNCTION fleet_machines_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleet_machines', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER machines_notify AFTER INSERT OR DELETE ON machines
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_machines_notify();
CREATE TRIGGER machines_renamed_notify AFTER UPDATE OF name, boot_mac ON machines
    FOR EACH ROW
    WHEN (OLD.name IS DISTINCT FROM NEW.name OR OLD.boot_mac IS DISTINCT FROM NEW.boot_mac)
    EXECUTE FUNCTION fleet_machines_notify();
CREATE TRIGGER interfaces_notify AFTER INSERT OR UPDATE OR DELETE ON interfaces
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_machines_notify();
CREATE TRIGGER held_addresses_notify AFTER INSERT OR UPDATE OR DELETE ON held_addresses
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_machines_notify();

-- `fleet_reload` is notified by the leader itself when it takes a new fleet into force
-- (`Store::announce_fleet`, in the transaction that records its digest in `settings`).
