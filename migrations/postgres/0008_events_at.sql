-- Retention ([policy.events] max_age_days) deletes events older than a time, oldest first, in
-- bounded batches: this index finds them without reading the whole history.
CREATE INDEX events_at ON events (at);
