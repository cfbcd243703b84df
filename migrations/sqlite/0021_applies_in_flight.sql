-- Applies are queued by any controller's API (`plans.status` = 'queued') and carried out by the
-- leader's executor, which looks for queued and applying ones twice a second: this index keeps
-- that look small however many finished plans the table holds.
CREATE INDEX plans_in_flight ON plans (status) WHERE status IN ('queued', 'applying');
