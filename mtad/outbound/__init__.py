"""mtad.outbound: the way out: queued deliveries to remote MX hosts, shaped per mailbox provider.

Job: ``scheduler`` (claims due deliveries, provider sites, connection tasks), ``providers`` (shaping as data),
``throttle`` (concurrency, token buckets, suspensions; memory only), ``delivery`` and ``pipelining`` (SMTP
sessions, TLS policy, RFC 2920), ``classify`` (every reply and error to an ``Outcome``), ``dsn`` (RFC 3464),
``dkim_pool``/``dkim_worker`` (signing in worker processes), ``queueadmin`` (the operator's queue commands).
May import: ``mtad.events`` and below; not ``smtp`` or ``inbound`` (sibling layers).
Contract: a claimed delivery's outcome is recorded (events, suppressions, DSN, next state) in one write, retried
until written; a delivery is never sent by two claimers at once (leases).
"""
