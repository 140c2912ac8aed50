"""mtad.net: mtad's outgoing network clients other than SMTP: HTTP and DNS.

Job: outgoing HTTP with the SSRF guard (``httpclient``), the lean keep-alive POST client (``fasthttp``), MX/A/AAAA
lookups with a TTL cache (``resolver``). Shared by route forwards, webhooks and outbound delivery.
May import: ``mtad.base`` and third-party libraries; not ``mtad.mail`` (a sibling layer), nothing above.
Contract: every connection an untrusted URL makes goes through the SSRF policy; no SQL, no message policy.
"""
