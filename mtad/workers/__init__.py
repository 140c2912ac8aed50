"""mtad.workers: the one helper-process pool, for CPU work that must not run on the event loop's core.

Job: run batches of one kind of job in N child processes (``pool.WorkerPool``), in one wire format
(``wire``: a length, then ``marshal`` data), with the child's loop in ``child``. The jobs themselves
live in their domain packages and are named to the pool by a dotted ``"package.module:function"``
target that the child imports (DKIM signing: ``mtad.outbound.signer``; route POST forms:
``mtad.inbound.form.jobs``).

May import: ``mtad.base`` and the standard library only; it never imports the packages whose jobs it
runs (a child imports its target by name).

Contract: a job submitted to a pool is done exactly once, by a child or in this process, and its
caller gets the same result either way; a child never outlives mtad (it exits when its stdin closes).
This ``__init__`` imports nothing, so a child loads only ``child``, ``wire`` and its target.
"""
