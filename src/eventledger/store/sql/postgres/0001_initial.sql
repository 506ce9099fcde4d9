-- eventledger schema v1 (PostgreSQL). Times are bigint microseconds since the epoch (UTC).

CREATE TABLE events (
    event_id      TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    type          TEXT NOT NULL,
    ts_us         BIGINT NOT NULL,
    metadata      JSONB NOT NULL,
    price         DOUBLE PRECISION,
    sequence      BIGINT,
    user_seq      BIGINT NOT NULL,
    content_hash  TEXT NOT NULL,
    batch_id      TEXT NOT NULL,
    batch_index   BIGINT NOT NULL,
    applied_at_us BIGINT NOT NULL
);
CREATE INDEX events_user ON events (user_id, user_seq);
CREATE INDEX events_batch ON events (batch_id, batch_index);

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    last_seen_at  BIGINT NOT NULL,
    first_seen_at BIGINT,
    applied_count BIGINT NOT NULL DEFAULT 0,
    total_value   DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE user_counts (
    user_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    n       BIGINT NOT NULL,
    PRIMARY KEY (user_id, type)
);

CREATE TABLE batches (
    batch_id           TEXT PRIMARY KEY,
    received_at        BIGINT NOT NULL,
    total              BIGINT NOT NULL,
    applied            BIGINT NOT NULL,
    duplicates         BIGINT NOT NULL,
    rejected           BIGINT NOT NULL,
    rejected_by_reason JSONB NOT NULL,
    balanced           BOOLEAN NOT NULL,
    completed_at       BIGINT NOT NULL
);

CREATE TABLE batch_outcomes (
    batch_id    TEXT NOT NULL,
    batch_index BIGINT NOT NULL,
    event_id    TEXT,
    user_id     TEXT,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    detail      TEXT,
    PRIMARY KEY (batch_id, batch_index)
);

CREATE TABLE endpoints (
    endpoint_id TEXT PRIMARY KEY,
    url         TEXT NOT NULL,
    secret      TEXT,
    event_types JSONB,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE deliveries (
    delivery_id      TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL,
    entity_key       TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    endpoint_id      TEXT,
    target_url       TEXT NOT NULL,
    payload          BYTEA NOT NULL,
    state            TEXT NOT NULL DEFAULT 'PENDING',
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_status      INTEGER,
    next_attempt_at  BIGINT NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    completed_at     BIGINT,
    UNIQUE (entity_key, sequence)
);
CREATE INDEX deliveries_state ON deliveries (state, next_attempt_at);

CREATE TABLE entity_sequences (
    entity_key    TEXT PRIMARY KEY,
    last_sequence BIGINT NOT NULL
);
