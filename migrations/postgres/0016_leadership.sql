-- One leader among the controllers on this database runs the reconcile loop, the executor, the
-- timeout watch, the power poll and event retention (`src/controller/leader.rs`). Its term is
-- this one row: who holds it (`holder`: controller id and process instance), until when by the
-- database's clock (`expires_at`, Unix ms), and its generation, which grows with every new term.
CREATE TABLE leadership (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    controller_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The database's clock in Unix milliseconds: every controller judges terms by this one.
CREATE FUNCTION fleet_now_ms() RETURNS BIGINT LANGUAGE sql VOLATILE AS
$$ SELECT CAST(floor(EXTRACT(EPOCH FROM clock_timestamp()) * 1000) AS BIGINT) $$;

-- Fencing. A leader's connections carry `fleet.fence` = 'HOLDER GENERATION' (set when the
-- connection opens); every write statement on them must find that term still current, and
-- share-locks the row so a takeover waits for the writes of the term it ends. A paused old
-- leader resumed after a takeover therefore has every write refused (SQLSTATE FL001).
-- Connections without the setting (the API, the machine API, DHCP, heartbeats) are not fenced.
CREATE FUNCTION fleet_check_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    fence TEXT := current_setting('fleet.fence', true);
BEGIN
    IF fence IS NULL OR fence = '' THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM leadership
     WHERE name = 'leader'
       AND holder || ' ' || CAST(generation AS TEXT) = fence
       AND expires_at > fleet_now_ms()
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'leadership term % is over: another controller leads this database', fence
            USING ERRCODE = 'FL001';
    END IF;
    RETURN NULL;
END $$;

-- Puts the fence on every table but the leadership itself. A migration that adds a table calls
-- it again (the test `leadership::every_table_is_fenced_on_postgres` checks).
CREATE FUNCTION fleet_fence_every_table() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    name TEXT;
BEGIN
    FOR name IN
        SELECT tablename FROM pg_tables
         WHERE schemaname = current_schema()
           AND tablename NOT IN ('leadership', '_sqlx_migrations')
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS fleet_fence ON %I', name);
        EXECUTE format('CREATE TRIGGER fleet_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE '
                       'ON %I FOR EACH STATEMENT EXECUTE FUNCTION fleet_check_fence()', name);
    END LOOP;
END $$;

SELECT fleet_fence_every_table();
