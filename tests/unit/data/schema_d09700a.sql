-- The SCHEMA text of mtad at commit d09700a (git show d09700a:mtad/store/engine.py), which stamped
-- user_version 2 on the files it made: read by tests/unit/test_store_migrations.py.
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    direction TEXT NOT NULL,
    domain TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    message_id TEXT NOT NULL DEFAULT '',
    headers TEXT NOT NULL,
    options TEXT NOT NULL,
    envelope TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    stored_until REAL,
    attachments TEXT NOT NULL DEFAULT '[]'  -- mtad.attachments.listing, for events' message.attachments
);
CREATE INDEX IF NOT EXISTS messages_created ON messages(created_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    recipients TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    lease_until REAL,
    provider TEXT,
    last_code INTEGER,
    last_reply TEXT,
    sender TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_message ON deliveries(message);
CREATE TABLE IF NOT EXISTS forwards (
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    recipient TEXT NOT NULL,
    route_id TEXT,
    action TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS forwards_due ON forwards(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    lease_until REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    domain TEXT NOT NULL,
    event TEXT NOT NULL,
    recipient TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL,
    variables TEXT  -- the key of its user-variables in event_variables; NULL: they are inline in data
);
CREATE INDEX IF NOT EXISTS events_domain_time ON events(domain, timestamp);
CREATE INDEX IF NOT EXISTS events_time ON events(timestamp);
CREATE TABLE IF NOT EXISTS stats (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    hour INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, hour)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS suppressions (
    domain TEXT NOT NULL,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (domain, kind, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS routes (
    id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    description TEXT NOT NULL,
    expression TEXT NOT NULL,
    actions TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    receiving INTEGER NOT NULL DEFAULT 1,
    spam_action TEXT NOT NULL DEFAULT 'disabled',
    wildcard INTEGER NOT NULL DEFAULT 0,
    dkim_selector TEXT NOT NULL,
    dkim_key TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    login TEXT PRIMARY KEY,
    domain TEXT NOT NULL,  -- an API domain or a config one (credentials may be added to both)
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_domain ON credentials(domain);
CREATE INDEX IF NOT EXISTS events_domain_event ON events(domain, event, timestamp);
-- recipient and message-id lookups: keyed by hour first, so that inserts land in the small, hot part of the index
-- of the current hour instead of dirtying a random page per event (eventquery probes hour by hour)
CREATE INDEX IF NOT EXISTS events_recipient_hour
    ON events(domain, CAST(timestamp / 3600 AS INTEGER), recipient COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS events_message_hour ON events(domain, CAST(timestamp / 3600 AS INTEGER), message_id);
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries(event_id);
CREATE INDEX IF NOT EXISTS stats_tag_event_hour ON stats(tag, event, hour);  -- account-wide stats
CREATE TABLE IF NOT EXISTS stats_daily (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS stats_daily_tag_event_day ON stats_daily(tag, event, day);
CREATE TABLE IF NOT EXISTS stats_dims (
    domain TEXT NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, dim, value, event, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_variables (
    key TEXT PRIMARY KEY,  -- a hash of data: the same variables are stored once, whatever names them
    data TEXT NOT NULL,  -- the JSON object
    last_at REAL NOT NULL  -- the newest event naming it: retention deletes it with that event
);
CREATE INDEX IF NOT EXISTS event_variables_last ON event_variables(last_at);
CREATE TABLE IF NOT EXISTS webhooks (
    domain TEXT NOT NULL,
    hook TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, hook, url)
) WITHOUT ROWID;
