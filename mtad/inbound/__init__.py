"""mtad.inbound: the way in for receiving domains: routes, and the work they create.

Job: ``router`` (route expressions parsed, never evaluated; RE2 matching), ``routing`` (the RCPT-time decision and
the forward rows, SRS), ``forward`` (route POSTs as durable work), ``store_action`` (``store()``: keep, notify,
expire), ``form`` (Mailgun's parsed and raw POST bodies, built in worker processes).
May import: ``mtad.events`` and below; not ``smtp`` or ``outbound`` (sibling layers).
Contract: a route's actions become work rows committed with the message; a POST is retried by the shared HTTP-work
retry rule until done or given up.
"""
