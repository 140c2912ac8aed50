-- A state database as mtad wrote it before events referenced stored user variables (schema version 1,
-- commit bebe064): its schema and one accepted event whose 2 KB user-variables are inline in its JSON.
-- Made with Store.open() and events.record(), dumped with sqlite3 iterdump(). Loaded by test_events_variables.py.
BEGIN TRANSACTION;
CREATE TABLE credentials (
    login TEXT PRIMARY KEY,
    domain TEXT NOT NULL,  -- an API domain or a config one (credentials may be added to both)
    password_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    recipients TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    provider TEXT,
    last_code INTEGER,
    last_reply TEXT,
    sender TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE domains (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    receiving INTEGER NOT NULL DEFAULT 1,
    spam_action TEXT NOT NULL DEFAULT 'disabled',
    wildcard INTEGER NOT NULL DEFAULT 0,
    dkim_selector TEXT NOT NULL,
    dkim_key TEXT NOT NULL
);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    domain TEXT NOT NULL,
    event TEXT NOT NULL,
    recipient TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL DEFAULT '',
    data TEXT NOT NULL
);
INSERT INTO "events" VALUES(1,'oldEventId0000000000000',1700000000.0,'example.com','accepted','old@dest.test','old-1@example.com','OLDQUEUEID01','','{"id":"oldEventId0000000000000","event":"accepted","timestamp":1700000000.0,"log-level":"info","recipient":"old@dest.test","recipient-domain":"dest.test","message":{"headers":{"message-id":"old-1@example.com","from":"postmaster@example.com","to":"old@dest.test","subject":"Before the upgrade"},"attachments":[],"size":120},"tags":["legacy"],"campaigns":[],"user-variables":{"order":"old-42","blob":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"},"envelope":{"sender":"postmaster@example.com","targets":"old@dest.test","transport":"smtp","sending-ip":"127.0.0.1"},"flags":{"is-authenticated":true,"is-test-mode":false,"is-routed":false,"is-delayed-bounce":false,"is-system-test":false},"storage":{"key":"OLDQUEUEID01"},"method":"smtp","direction":"outgoing","originating-ip":"127.0.0.1"}');
CREATE TABLE forwards (
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
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE messages (
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
    stored_until REAL
);
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    priority INTEGER NOT NULL,
    description TEXT NOT NULL,
    expression TEXT NOT NULL,
    actions TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE stats (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    hour INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, hour)
) WITHOUT ROWID;
INSERT INTO "stats" VALUES('example.com','','accepted',472222,1);
INSERT INTO "stats" VALUES('example.com','','accepted:outgoing',472222,1);
INSERT INTO "stats" VALUES('example.com','legacy','accepted',472222,1);
INSERT INTO "stats" VALUES('example.com','legacy','accepted:outgoing',472222,1);
CREATE TABLE stats_daily (
    domain TEXT NOT NULL,
    tag TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, tag, event, day)
) WITHOUT ROWID;
INSERT INTO "stats_daily" VALUES('example.com','','accepted:outgoing',19675,1);
INSERT INTO "stats_daily" VALUES('example.com','legacy','accepted:outgoing',19675,1);
CREATE TABLE stats_dims (
    domain TEXT NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    event TEXT NOT NULL,
    day INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (domain, dim, value, event, day)
) WITHOUT ROWID;
INSERT INTO "stats_dims" VALUES('example.com','ip','127.0.0.1','accepted:outgoing',19675,1);
INSERT INTO "stats_dims" VALUES('example.com','provider','dest.test','accepted:outgoing',19675,1);
CREATE TABLE suppressions (
    domain TEXT NOT NULL,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (domain, kind, address)
) WITHOUT ROWID;
CREATE TABLE webhook_deliveries (
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
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE webhooks (
    domain TEXT NOT NULL,
    hook TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, hook, url)
) WITHOUT ROWID;
CREATE INDEX messages_created ON messages(created_at);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX deliveries_message ON deliveries(message);
CREATE INDEX forwards_due ON forwards(state, next_attempt_at);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(state, next_attempt_at);
CREATE INDEX events_domain_time ON events(domain, timestamp);
CREATE INDEX events_time ON events(timestamp);
CREATE INDEX credentials_domain ON credentials(domain);
CREATE INDEX events_domain_event ON events(domain, event, timestamp);
CREATE INDEX events_recipient_hour
    ON events(domain, CAST(timestamp / 3600 AS INTEGER), recipient COLLATE NOCASE);
CREATE INDEX events_message_hour ON events(domain, CAST(timestamp / 3600 AS INTEGER), message_id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries(event_id);
CREATE INDEX stats_tag_event_hour ON stats(tag, event, hour);
CREATE INDEX stats_daily_tag_event_day ON stats_daily(tag, event, day);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('events',1);
COMMIT;
PRAGMA user_version=1;
