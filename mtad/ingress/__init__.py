"""mtad.ingress: where mail enters: who may send or relay, what is accepted, and the commit that earns a 250.

Job: ``pipeline`` (relay policy, the DATA pipeline: cleanup, options, routing decisions, the one commit path
shared by SMTP and the HTTP send API), ``directory`` (users, sending and receiving domains, swapped on reload),
``authguard`` (AUTH failure limits across connections).
May import: ``mtad.smtp``, ``mtad.outbound``, ``mtad.inbound`` and below.
Contract: a message is acknowledged (``250`` or an API id) only after the store committed it with its work rows and
accepted events.
"""
