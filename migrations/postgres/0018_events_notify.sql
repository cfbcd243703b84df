-- Controllers following the history (`GET /api/v1/events/stream`, `store/feed.rs`) LISTEN on
-- `fleet_events`. Every transaction that inserts events notifies that channel once, at its
-- commit (PostgreSQL delivers notifications at commit and merges identical ones of one
-- transaction), whichever controller or tool wrote them. The notification is a wake-up only:
-- the listeners read the events from this table after the last one they have, so a lost
-- notification costs latency, never an event. (PostgreSQL only: on SQLite, the one controller
-- wakes its own followers.)
CREATE FUNCTION fleet_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleet_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_events_notify();
