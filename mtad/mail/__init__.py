"""mtad.mail: what mtad knows about messages as bytes and addresses, without network or store.

Job: header parsing and ``Received:`` (``headers``), Mailgun's sending options (``options``), DKIM signing
(``dkim``), SRS, HMAC signing of POSTs and webhooks (``signing``), API fields to MIME (``compose``), a message's
attachment list (``attachments``).
May import: ``mtad.base`` and third-party libraries; not ``mtad.net`` (a sibling layer), nothing above.
Contract: pure functions and frozen values; no sockets, no SQL, no event loop needed.
"""
