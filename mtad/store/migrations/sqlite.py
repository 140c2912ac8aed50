"""The SQLite store's schema, as numbered steps (see ``mtad.store.migrations`` for the contract).

The tables (one schema for every stage; see docs/architecture.md):
messages            one row per accepted message; the body is stored once
deliveries          one row per (message, destination domain): outbound work
forwards            one row per (message, recipient, route action destination): inbound work
webhook_deliveries  one row per (event, webhook URL)
events              Mailgun-shaped event log
event_variables     user variables too big to repeat in each event: stored once, named by events.variables
stats               hourly counters maintained as events are written
stats_daily         the same counters per day (what queries over days and months read)
stats_dims          daily counters by provider (recipient domain) and sending IP, without tags
suppressions        bounces / unsubscribes / complaints / whitelists per domain
webhooks            event webhook URLs per (domain, webhook id): the config file's (synced at start) and the API's
routes, kv          routes created by API; small settings (queue pauses, ...)
domains, credentials  sending/receiving domains (with their DKIM key) and SMTP logins created by API
panel_users         users of the web control panel (mtad/ui): login, scrypt hash
messages.stored_until  set while a route's store() keeps the message (GET /v3/domains/D/messages/KEY)
templates, template_versions  stored templates (/v3/{domain}/templates) and their versions (store.templates)
Work rows carry ``state, attempts, next_attempt_at, locked_by, locked_at, lease_until``: a claim is a lease
(``mtad.store.leases``).

The version is SQLite's ``PRAGMA user_version``; ``migrate`` runs the steps a file lacks in one transaction
(``BEGIN IMMEDIATE``: a second process opening the same file waits, then finds it migrated).

History of the numbers: release bebe064 stamped 1. From f496db1 to d09700a mtad stamped 2 on files that, besides
step 2's variables, also got the columns of steps 3 and 4 added at every open (the ``ADDED_COLUMNS`` of that time);
steps 2 to 4 therefore add only what is missing, so a file stamped 2 by any of those builds ends the same.
A fresh file runs every step: the columns added by later steps come last in their tables (as in a migrated file),
which no code depends on (rows are read by column name).
"""

from __future__ import annotations

import logging
import sqlite3

from mtad.base.errors import StoreError
from mtad.store.migrations import Migration, check, latest, pending

log = logging.getLogger("mtad.store")

WORK_TABLES = ("deliveries", "forwards", "webhook_deliveries")


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute the statements of ``script`` one by one in the open transaction (``executescript`` would COMMIT
    it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {statement.strip()[:80]!r}")


def add_column(conn: sqlite3.Connection, table: str, column: str, definition: str) -> bool:
    """``ALTER TABLE table ADD COLUMN column definition`` unless the column is there; True if added. (With a
    constant default SQLite rewrites no row.)"""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if column in present:
        return False
    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return True


# --- 1: the schema of release bebe064, verbatim ------------------------------------------------------------------

V1_SCHEMA = """
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
    stored_until REAL
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
    data TEXT NOT NULL
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
CREATE TABLE IF NOT EXISTS webhooks (
    domain TEXT NOT NULL,
    hook TEXT NOT NULL,
    url TEXT NOT NULL,
    format TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, hook, url)
) WITHOUT ROWID;
"""


def _v1(conn: sqlite3.Connection) -> None:
    run_script(conn, V1_SCHEMA)


# --- 2: a message's user variables stored once -------------------------------------------------------------------

def _v2(conn: sqlite3.Connection) -> None:
    add_column(conn, "events", "variables",
               "TEXT")  # the key of its user-variables in event_variables; NULL: they are inline in data
    run_script(conn, """
CREATE TABLE IF NOT EXISTS event_variables (
    key TEXT PRIMARY KEY,  -- a hash of data: the same variables are stored once, whatever names them
    data TEXT NOT NULL,  -- the JSON object
    last_at REAL NOT NULL  -- the newest event naming it: retention deletes it with that event
);
CREATE INDEX IF NOT EXISTS event_variables_last ON event_variables(last_at);
""")


# --- 3: claims are leases ----------------------------------------------------------------------------------------

def _v3(conn: sqlite3.Connection) -> None:
    for table in WORK_TABLES:
        add_column(conn, table, "lease_until", "REAL")
        # a lock taken before leases is held by nobody who renews it: its lease has run out
        conn.execute(f"UPDATE {table} SET lease_until = locked_at WHERE locked_by IS NOT NULL AND lease_until IS NULL")


# --- 4: the attachments of a message, for events -----------------------------------------------------------------

def _v4(conn: sqlite3.Connection) -> None:
    add_column(conn, "messages", "attachments",
               "TEXT NOT NULL DEFAULT '[]'")  # mtad.mail.attachments.listing, for events' message.attachments


# --- 5: provider shaping shared by the nodes ---------------------------------------------------------------------

def _v5(conn: sqlite3.Connection) -> None:
    """Nothing on SQLite: one node shapes in memory (outbound.throttle); PostgreSQL's step 5 adds the shared
    shaping tables (store.postgres.shaping). The number keeps both lists in step."""


# --- 6: a domain's spam threshold and on_error policy ------------------------------------------------------------

def _v6(conn: sqlite3.Connection) -> None:
    add_column(conn, "domains", "spam_threshold", "REAL")  # NULL: the config's spam.threshold (mtad.inbound.spam)
    add_column(conn, "domains", "spam_on_error", "TEXT")  # accept | tempfail; NULL: the config's spam.on_error


# --- 7: per receiving domain authentication policies (issue 15) -----------------------------------------------

def _v7(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS domain_auth_policies (
    domain TEXT PRIMARY KEY,  -- an API domain (store.authpolicy); the config file's domains are in the file
    dmarc_reject TEXT NOT NULL,  -- reject | quarantine | ignore
    dmarc_quarantine TEXT NOT NULL,
    spf_fail TEXT NOT NULL,
    no_auth TEXT NOT NULL,
    updated_at REAL NOT NULL
);
""")


# --- 8: users of the web control panel ---------------------------------------------------------------------------

def _v8(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS panel_users (
    login TEXT PRIMARY KEY,  -- lower case
    password_hash TEXT NOT NULL,  -- $scrypt$... (mtad.base.passwords)
    created_at REAL NOT NULL
);
""")


# --- 9: mailing lists (store.lists) --------------------------------------------------------------------------------

def _v9(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS mailing_lists (
    id INTEGER PRIMARY KEY,  -- kept by a rename: members and expansions name the list by it
    address TEXT NOT NULL UNIQUE,  -- lower-cased
    name TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    access_level TEXT NOT NULL DEFAULT 'readonly',  -- readonly | members | everyone: who may post to it
    reply_preference TEXT NOT NULL DEFAULT 'list',  -- list | sender
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS list_members (
    list_id INTEGER NOT NULL REFERENCES mailing_lists(id) ON DELETE CASCADE,
    address TEXT NOT NULL,  -- lower-cased; expansions read members in this order
    name TEXT NOT NULL DEFAULT '',
    vars TEXT NOT NULL DEFAULT '{}',  -- a JSON object: %recipient.KEY%
    subscribed INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    PRIMARY KEY (list_id, address)
);
CREATE TABLE IF NOT EXISTS list_expansions (  -- a message to a list, copied to its members page by page
    id INTEGER PRIMARY KEY,
    message TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    list_id INTEGER NOT NULL,  -- no foreign key: a list deleted meanwhile ends the expansion
    cursor TEXT NOT NULL DEFAULT '',  -- the last member address whose copy is committed
    copies INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,  -- queued | done
    next_attempt_at REAL NOT NULL,
    locked_by TEXT,
    locked_at REAL,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS list_expansions_due ON list_expansions(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS list_expansions_message ON list_expansions(message);
""")


# --- 10: reports about sent mail find the delivered events of a message ---------------------------------------------

def _v10(conn: sqlite3.Connection) -> None:
    """Partial indexes over ``delivered`` events only (store.reports: a late bounce or a complaint is about a
    delivered message), by queue id and by Message-ID; other events cost nothing more to insert."""
    run_script(conn, """
CREATE INDEX IF NOT EXISTS events_delivered_queue ON events(queue_id) WHERE event = 'delivered';
CREATE INDEX IF NOT EXISTS events_delivered_message ON events(message_id) WHERE event = 'delivered';
""")


# --- 11: engagement tracking ------------------------------------------------------------------------------------

def _v11(conn: sqlite3.Connection) -> None:
    """Domain tracking settings, the tracked messages' link lists and event data, first opens and clicks
    (``store.engagement``)."""
    run_script(conn, """
CREATE TABLE IF NOT EXISTS domain_tracking (
    domain TEXT PRIMARY KEY,
    settings TEXT NOT NULL,  -- JSON: open, click, unsubscribe, html_footer, text_footer, base_url
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tracked_messages (
    queue_id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    created_at REAL NOT NULL,  -- first rendered: retention counts from here
    data TEXT NOT NULL,  -- JSON: what its events show of it (headers, size, tags, campaigns, variables)
    links TEXT NOT NULL  -- JSON array: the link list a click token's index names
);
CREATE INDEX IF NOT EXISTS tracked_messages_created ON tracked_messages(created_at);
CREATE TABLE IF NOT EXISTS engagement_firsts (
    queue_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    kind TEXT NOT NULL,  -- opened | clicked
    at REAL NOT NULL,
    PRIMARY KEY (queue_id, recipient, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS engagement_firsts_at ON engagement_firsts(at);
""")


# --- 12: stored templates -----------------------------------------------------------------------------------------

def _v12(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS templates (
    domain TEXT NOT NULL,
    name TEXT NOT NULL,  -- lower-cased
    id TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, name)
);
CREATE TABLE IF NOT EXISTS template_versions (
    domain TEXT NOT NULL,
    template TEXT NOT NULL,
    tag TEXT NOT NULL,
    id TEXT NOT NULL,
    content TEXT NOT NULL,
    engine TEXT NOT NULL,
    comment TEXT NOT NULL DEFAULT '',
    headers TEXT NOT NULL DEFAULT '{}',  -- a JSON object: From, Subject, Reply-To
    active INTEGER NOT NULL DEFAULT 0,  -- at most one per template
    created_at REAL NOT NULL,
    PRIMARY KEY (domain, template, tag)
);
""")


# --- 13: automation rules' actions shared by the nodes ---------------------------------------------------------

def _v13(conn: sqlite3.Connection) -> None:
    """Nothing on SQLite: one node keeps its automation rules' actions in memory (outbound.throttle); PostgreSQL's
    step 13 adds provider_actions (store.postgres.shaping). The number keeps both lists in step."""


def _v14(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS report_keys (
    queue_id TEXT NOT NULL,
    recipient TEXT NOT NULL,  -- lower-cased
    kind TEXT NOT NULL,  -- bounce | delay | complaint | unsubscribe
    created_at REAL NOT NULL,
    PRIMARY KEY (queue_id, recipient, kind)
);
""")


# --- 15: campaigns (Mailgun's campaigns API): the campaigns, their counters and their events' index -----------------

def _v15(conn: sqlite3.Connection) -> None:
    """``mtad.store.campaigns`` describes these tables."""
    run_script(conn, """
CREATE TABLE IF NOT EXISTS campaigns (
    cid INTEGER PRIMARY KEY AUTOINCREMENT,  -- the store's number of a campaign, never reused
    domain TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS campaigns_domain_id ON campaigns(domain, id);
CREATE TABLE IF NOT EXISTS campaign_aliases (
    domain TEXT NOT NULL,
    id TEXT NOT NULL,  -- a former id of a renamed campaign
    cid INTEGER NOT NULL,
    PRIMARY KEY (domain, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS campaign_aliases_cid ON campaign_aliases(cid);
CREATE TABLE IF NOT EXISTS campaign_counts (
    cid INTEGER NOT NULL,
    event TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (cid, event)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS campaign_events (  -- stored in key order: a report's rows lie together
    cid INTEGER NOT NULL,
    event TEXT NOT NULL,
    timestamp REAL NOT NULL,
    event_id TEXT NOT NULL,
    minute INTEGER NOT NULL,  -- minutes since 1970
    month INTEGER NOT NULL,  -- year * 12 + month - 1
    recipient TEXT NOT NULL,
    recipient_domain TEXT NOT NULL,
    link TEXT NOT NULL,
    country TEXT NOT NULL,
    region TEXT NOT NULL,
    city TEXT NOT NULL,
    PRIMARY KEY (cid, event, timestamp, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS campaign_events_time ON campaign_events(cid, timestamp);
""")


def _v17_machine(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE campaign_events ADD COLUMN machine INTEGER NOT NULL DEFAULT 0")


def _v16(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS if_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    list_id INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    segment TEXT,  -- JSON array of ad hoc clauses; NULL: none given
    dispatch TEXT,  -- JSON object of delivery settings; NULL: none given
    state TEXT NOT NULL DEFAULT 'idle',
    paused INTEGER NOT NULL DEFAULT 0,
    begins_at REAL,
    started_at REAL,
    finished_at REAL,
    note TEXT NOT NULL DEFAULT '',
    ab_state TEXT NOT NULL DEFAULT '',  -- automatic winner selection: '' | split_testing | decision_delay | finished
    ab_decide_at REAL,
    winner_id INTEGER,
    ab_snapshots TEXT,  -- JSON: each content's stat_summary when the winner was chosen
    cursor TEXT NOT NULL DEFAULT '',
    copies INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    locked_by TEXT,
    locked_at REAL,
    lease_until REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS if_campaigns_list ON if_campaigns(list_id, id);
CREATE INDEX IF NOT EXISTS if_campaigns_due ON if_campaigns(state, begins_at);
CREATE TABLE IF NOT EXISTS if_campaign_contents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id INTEGER NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    subject TEXT NOT NULL DEFAULT '',
    format TEXT NOT NULL DEFAULT 'html',
    html TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS if_campaign_contents_campaign ON if_campaign_contents(campaign_id, id);
CREATE TABLE IF NOT EXISTS if_dispatch (
    campaign_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    queue_id TEXT NOT NULL,
    content_id INTEGER NOT NULL,
    format TEXT NOT NULL,
    seed INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    PRIMARY KEY (campaign_id, address)
);
CREATE INDEX IF NOT EXISTS if_dispatch_queue ON if_dispatch(queue_id);
CREATE TABLE IF NOT EXISTS if_campaign_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    url TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS if_campaign_links_campaign ON if_campaign_links(campaign_id, url);
CREATE INDEX IF NOT EXISTS events_queue ON events(queue_id);
""")


def _v18(conn: sqlite3.Connection) -> None:
    """``mtad.store.textsearch``: one row per message's Subject and From, an FTS5 trigram index of them kept by
    triggers, filled from the events already stored."""
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.mtad_trigram_probe USING fts5(t, tokenize='trigram')")
        conn.execute("DROP TABLE temp.mtad_trigram_probe")
    except sqlite3.OperationalError as exc:
        raise StoreError(f"this SQLite ({sqlite3.sqlite_version}) lacks FTS5 with the trigram tokenizer"
                         f" (SQLite 3.34 or later built with FTS5 is needed for the events' text index): {exc}")
    run_script(conn, """
CREATE TABLE IF NOT EXISTS message_text (
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    domain TEXT NOT NULL,
    message_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    from_header TEXT NOT NULL,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS message_text_first ON message_text(first_at);
CREATE VIRTUAL TABLE IF NOT EXISTS message_text_fts USING fts5(subject, from_header, content='message_text',
    content_rowid='id', tokenize='trigram', columnsize=0);
CREATE TRIGGER IF NOT EXISTS message_text_added AFTER INSERT ON message_text BEGIN
    INSERT INTO message_text_fts (rowid, subject, from_header) VALUES (new.id, new.subject, new.from_header);
END;
CREATE TRIGGER IF NOT EXISTS message_text_deleted AFTER DELETE ON message_text BEGIN
    INSERT INTO message_text_fts (message_text_fts, rowid, subject, from_header)
        VALUES ('delete', old.id, old.subject, old.from_header);
END;
""")
    from mtad.store import textsearch
    textsearch.backfill(conn)


def _v19(conn: sqlite3.Connection) -> None:
    run_script(conn, """
CREATE TABLE IF NOT EXISTS if_campaign_counts (
    campaign_id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    event TEXT NOT NULL,  -- an event kind, or sent / sent-seed (copies made; severity = their format)
    severity TEXT NOT NULL,
    total INTEGER NOT NULL,
    uniq INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, content_id, event, severity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS if_campaign_seen (
    campaign_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    what TEXT NOT NULL,  -- event/severity, or L + a clicked url
    PRIMARY KEY (campaign_id, address, what)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS if_link_counts (
    campaign_id INTEGER NOT NULL,
    content_id INTEGER NOT NULL,
    url TEXT NOT NULL,
    total INTEGER NOT NULL,
    uniq INTEGER NOT NULL,
    uniq_by_link INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, content_id, url)
) WITHOUT ROWID;

DELETE FROM if_campaign_counts;  -- recounted from the events: the step may be applied again
DELETE FROM if_campaign_seen;
DELETE FROM if_link_counts;
INSERT INTO if_campaign_counts (campaign_id, content_id, event, severity, total, uniq)
SELECT campaign_id, content_id, CASE WHEN seed <> 0 THEN 'sent-seed' ELSE 'sent' END, format, count(*), count(*)
FROM if_dispatch GROUP BY campaign_id, content_id, CASE WHEN seed <> 0 THEN 'sent-seed' ELSE 'sent' END, format;
INSERT INTO if_campaign_counts (campaign_id, content_id, event, severity, total, uniq)
SELECT d.campaign_id, d.content_id, e.event, e.severity, count(*),
       CASE WHEN e.severity = 'machine' THEN 0 ELSE count(DISTINCT d.address) END
FROM if_dispatch d JOIN events e ON e.queue_id = d.queue_id WHERE d.seed = 0
GROUP BY d.campaign_id, d.content_id, e.event, e.severity;
INSERT INTO if_campaign_seen (campaign_id, address, what)
SELECT DISTINCT d.campaign_id, d.address, e.event || '/' || e.severity
FROM if_dispatch d JOIN events e ON e.queue_id = d.queue_id WHERE d.seed = 0 AND e.event <> 'accepted';
INSERT INTO if_link_counts (campaign_id, content_id, url, total, uniq, uniq_by_link)
SELECT c.campaign_id, c.content_id, c.url, count(*), sum(c.first),
       count(DISTINCT CASE WHEN c.machine = 0 THEN c.address END) FROM (
    SELECT d.campaign_id, d.content_id, d.address, substr(coalesce(json_extract(e.data, '$.url'), ''), 1, 600) AS url,
           CASE WHEN e.severity = 'machine' THEN 1 ELSE 0 END AS machine,
           CASE WHEN e.severity <> 'machine' AND e.seq = min(e.seq) OVER (PARTITION BY d.campaign_id, d.address,
               e.severity = 'machine') THEN 1 ELSE 0 END AS first
    FROM if_dispatch d JOIN events e ON e.queue_id = d.queue_id WHERE d.seed = 0 AND e.event = 'clicked'
) c GROUP BY c.campaign_id, c.content_id, c.url;
INSERT INTO if_campaign_seen (campaign_id, address, what)
SELECT DISTINCT campaign_id, address, 'L' || url FROM (
    SELECT d.campaign_id, d.address, substr(coalesce(json_extract(e.data, '$.url'), ''), 1, 600) AS url
    FROM if_dispatch d JOIN events e ON e.queue_id = d.queue_id
    WHERE d.seed = 0 AND e.event = 'clicked' AND e.severity <> 'machine'
) c;
""")


STEPS: tuple[Migration, ...] = (
    Migration(1, "the schema of release bebe064", _v1),
    Migration(2, "events.variables and event_variables: user variables stored once", _v2),
    Migration(3, "lease_until on deliveries, forwards and webhook_deliveries: claims are leases", _v3),
    Migration(4, "messages.attachments: the attachment list of a message, for events", _v4),
    Migration(5, "shaping_slots and shaping_buckets: provider shaping shared by the nodes (PostgreSQL only)", _v5),
    Migration(6, "domains.spam_threshold and domains.spam_on_error: a domain's spam policy", _v6),
    Migration(7, "domain_auth_policies: per receiving domain authentication policies", _v7),
    Migration(8, "panel_users: users of the web control panel", _v8),
    Migration(9, "mailing_lists, list_members, list_expansions: mailing lists and their durable expansion", _v9),
    Migration(10, "events_delivered_queue and events_delivered_message: reports find what they are about", _v10),
    Migration(11, "domain_tracking, tracked_messages and engagement_firsts: engagement tracking", _v11),
    Migration(12, "templates and template_versions: stored templates", _v12),
    Migration(13, "provider_actions: automation rules' actions shared by the nodes (PostgreSQL only)", _v13),
    Migration(14, "report_keys: a replayed late report records nothing", _v14),
    Migration(15, "campaigns, campaign_aliases, campaign_counts, campaign_events: Mailgun's campaigns", _v15),
    Migration(16, "if_campaigns and its contents, dispatch rows, links; events_queue: InboxFirst campaigns", _v16),
    Migration(17, "campaign_events.machine: machines' opens and clicks left out of unique figures", _v17_machine),
    Migration(18, "message_text and message_text_fts: an index of the events' Subject and From", _v18),
    Migration(19, "if_campaign_counts, if_campaign_seen, if_link_counts: InboxFirst reports from counters", _v19),
)
check(STEPS)
SCHEMA_VERSION = latest(STEPS)


def version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, where: str) -> tuple[int, int]:
    """Bring the file of ``conn`` (autocommit, no transaction open) to ``SCHEMA_VERSION``: the steps it lacks and
    the new ``user_version`` in one transaction. Returns (version before, version after); ``StoreError`` if the
    file is newer than this mtad (nothing written) or a step fails (rolled back, nothing written)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = version(conn)
        steps = pending(STEPS, before, where)
        for step in steps:
            try:
                step.apply(conn)
            except sqlite3.Error as exc:
                raise StoreError(f"{where}: schema version {step.version} ({step.description}) failed: {exc};"
                                 f" the file is left at version {before}") from exc
        if steps:
            conn.execute(f"PRAGMA user_version={steps[-1].version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if steps and before:
        for step in steps:
            log.info("store: %s migrated to schema version %d: %s", where, step.version, step.description)
    return before, SCHEMA_VERSION
