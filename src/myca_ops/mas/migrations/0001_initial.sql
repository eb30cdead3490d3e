-- Collector samples: one row per sample, keyed by the id the collector gave it when it was
-- taken, so a sample flushed twice (a crash between commit and spool truncation) is stored once.
CREATE TABLE samples (
    id uuid PRIMARY KEY,
    collector text NOT NULL,
    host text NOT NULL,
    taken_at timestamptz NOT NULL,
    data jsonb NOT NULL
);
CREATE INDEX samples_collector_taken_at ON samples (collector, taken_at);

-- One row per collector: its last heartbeat and how many samples wait in its spool.
CREATE TABLE collector_heartbeats (
    collector text PRIMARY KEY,
    host text NOT NULL,
    beat_at timestamptz NOT NULL,
    backlog integer NOT NULL,
    interval_s real NOT NULL
);

-- Session events from the bridge, stored once per (session, event).
CREATE TABLE bridge_events (
    session_id text NOT NULL,
    event text NOT NULL,
    at timestamptz NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (session_id, event)
);
