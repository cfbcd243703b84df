-- One leader among the controllers on this database runs the reconcile loop, the executor, the
-- timeout watch, the power poll and event retention (`src/controller/leader.rs`). Its term is
-- this one row: who holds it (`holder`: controller id and process instance), until when
-- (`expires_at`, Unix ms), and its generation, which grows with every new term. SQLite serves
-- one controller, so its writes carry no fence (PostgreSQL's migration adds one).
CREATE TABLE leadership (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    controller_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
