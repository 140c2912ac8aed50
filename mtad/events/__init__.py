"""mtad.events: what happened to mail, recorded and reported in Mailgun's shapes.

Job: building events in Mailgun's JSON shape (``shape``, pure; the store writes them with their counters and
webhook rows, ``store.events``), the events API and analytics queries
(``query``), stats from counters (``stats``), signed webhooks retried durably (``webhooks``), event retention
(``retention``), the seed's legacy log and stats (``legacy``).
May import: ``mtad.store`` and below (``config``, ``mail``, ``net``, ``base``).
Contract: an event is recorded in the same transaction as the state change it reports (staged per group commit);
its webhook rows and counters commit with it.
"""
