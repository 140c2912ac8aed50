"""mtad.inbound.verdicts: who really sent an inbound message: SPF, DKIM, DMARC and ARC verdicts, and the policy.

Job: ``check`` (``Verifier``: the checks of one message, concurrently and bounded, the ``Authentication-Results``
header and the domain's policy decision: accept, quarantine = tag, or reject), ``spf`` (RFC 7208 on mtad's
resolver), ``dkimjob`` (dkimpy's DKIM and ARC verification as a job of the worker pool, keys looked up first),
``dmarc`` (RFC 7489: record, alignment, Public Suffix List), ``results`` (the RFC 8601 header and the verdict
headers of the route POST).
May import: ``mtad.config``, ``mtad.mail``, ``mtad.net``, ``mtad.workers``, ``mtad.base`` (it sits in ``inbound``;
ingress calls it at the end of DATA of an unauthenticated message, before the route runs).
Contract: ``Verifier.check`` never raises for any message or DNS answer; every DNS lookup goes through
``mtad.net.resolver``; CPU work (DKIM/ARC) runs in the worker pool's children.
"""
