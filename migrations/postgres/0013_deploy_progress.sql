-- A deploying run's state (issue 14): the last progress its heartbeats reported (JSON: stage,
-- phase, done, total) and when, and when its installer signalled done (netboot off from then:
-- the machine boots its disk while the call-back clock runs). Keep in step with ../sqlite/0013.
ALTER TABLE machine_state ADD COLUMN progress TEXT;
ALTER TABLE machine_state ADD COLUMN progress_at BIGINT;
ALTER TABLE machine_state ADD COLUMN install_done_at BIGINT;
