"""mtad.smtp: the SMTP server side: protocol, limits, TLS; no mail policy.

Job: ``server`` (the aiosmtpd ``SMTP`` subclass: command loop, limits, AUTH, bulk DATA), ``dataread`` (DATA read
in bulk, bare CR/LF/NUL policy, dot-unstuffing), ``tls`` (server contexts, the self-signed certificate).
May import: ``mtad.events`` and below; not ``outbound`` or ``inbound`` (sibling layers).
Contract: a session hands each transaction to a handler (ingress) and answers what the handler decides.
"""
