-- eventledger schema v1 (SQLite). Times are integer microseconds since the epoch (UTC).

CREATE TABLE events (
    event_id      TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    type          TEXT NOT NULL,
    ts_us         INTEGER NOT NULL,
    metadata      TEXT NOT NULL,          -- JSON object
    price         REAL,                   -- purchases only
    sequence      INTEGER,                -- as carried by the client, if any
    user_seq      INTEGER NOT NULL,       -- the user's apply order: 1, 2, 3...
    content_hash  TEXT NOT NULL,
    batch_id      TEXT NOT NULL,
    batch_index   INTEGER NOT NULL,
    applied_at_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX events_user ON events (user_id, user_seq);
CREATE INDEX events_batch ON events (batch_id, batch_index);

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    last_seen_at  INTEGER NOT NULL,
    first_seen_at INTEGER,                -- earliest applied event; NULL until one applies
    applied_count INTEGER NOT NULL DEFAULT 0,
    total_value   REAL NOT NULL DEFAULT 0
) WITHOUT ROWID;

CREATE TABLE user_counts (
    user_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    n       INTEGER NOT NULL,
    PRIMARY KEY (user_id, type)
) WITHOUT ROWID;

CREATE TABLE batches (
    batch_id           TEXT PRIMARY KEY,
    received_at        INTEGER NOT NULL,
    total              INTEGER NOT NULL,
    applied            INTEGER NOT NULL,
    duplicates         INTEGER NOT NULL,
    rejected           INTEGER NOT NULL,
    rejected_by_reason TEXT NOT NULL,     -- JSON object
    balanced           INTEGER NOT NULL,
    completed_at       INTEGER NOT NULL
);

-- Outcomes of the events of a batch that were not applied; applied ones are the events rows
-- carrying the batch_id, so a stored report costs no second copy of the applied events.
CREATE TABLE batch_outcomes (
    batch_id    TEXT NOT NULL,
    batch_index INTEGER NOT NULL,
    event_id    TEXT,
    user_id     TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    detail      TEXT,
    PRIMARY KEY (batch_id, batch_index)
) WITHOUT ROWID;

CREATE TABLE endpoints (
    endpoint_id TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT,
    event_types TEXT,                     -- JSON array of types, NULL for all
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL
);

-- One row per (destination, event). Standalone DispatchEvents: delivery_id = event_id and
-- entity_key = entity_id. Pipeline: delivery_id = endpoint_id || '/' || event_id and
-- entity_key = endpoint_id || '/' || user_id, with gap-free sequences from entity_sequences.
CREATE TABLE deliveries (
    delivery_id      TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    entity_key       TEXT NOT NULL,
    sequence         INTEGER NOT NULL,
    endpoint_id      TEXT,
    target_url       TEXT NOT NULL,
    payload          BLOB NOT NULL,
    state            TEXT NOT NULL DEFAULT 'PENDING',
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_status      INTEGER,
    next_attempt_at  INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    UNIQUE (entity_key, sequence)
);
CREATE INDEX deliveries_state ON deliveries (state, next_attempt_at);

CREATE TABLE entity_sequences (
    entity_key    TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
) WITHOUT ROWID;
