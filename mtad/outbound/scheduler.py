"""The outbound scheduler: due deliveries -> provider shaping -> SMTP sessions -> recorded outcomes.

Mechanism only; every number comes from config (``DeliveryConfig``, ``ShapingConfig``).

1. Every ``poll_interval`` (or when woken after an enqueue or an outcome) due rows are claimed from the
   store (locked to this process, at most ``max_inflight`` at once), in one transaction with their
   suppressed recipients, the operator's pauses, and the bodies of small messages.
2. Each job is checked before any connection: age and Deliver-Within (fail, reason ``old``), test mode
   (a ``delivered`` event with code 650, nothing sent), suppressions (fail, ``suppress-*``), pauses.
3. The destination's MX hosts are resolved and its ``ProviderPolicy`` found (or the smarthost used, with a
   policy of its own: ``smarthost_policy``);
   the job (its preloaded body DKIM-signed by a worker process, ``signer``) joins the ready queue of
   its site (provider + hosts). A job whose recipients each get a copy of their own (tracking, unsubscribe
   variables: ``outbound.tracking``) is sent one transaction per recipient, each copy rendered and signed by a
   worker just ahead of its turn, after the message's link list is committed (``_send_personal``).
4. A site runs up to the provider's ``max_connections`` connection tasks, counted across the whole
   provider (gmail.com and every Google-hosted domain share one budget), and across every node when the store
   is shared (``throttle.limiters``: leased connection slots and a shared rate in the store). Each task opens one
   session and delivers queued jobs over it, one message-rate token each, up to
   ``max_deliveries_per_connection``. If no host answers, every job waiting for the site is deferred
   at once (the site is "dead" for this round, as Postfix does).
5. Replies matching an automation rule suspend or throttle the provider for the rule's duration; on a shared
   store, on every node (``throttle.rule_actions`` put in the store, which tells every node; each adopts them).
6. Outcomes are committed with their events; deferred recipients get their next attempt time. A session
   does not wait for that commit before its next message (at-least-once: a crash in between resends). Outcomes
   are written as soon as they are known, and those that come while a write is running, or within
   ``OUTCOME_EVERY`` of the previous write's start, are the next write, as one (``finish_attempts``): one store
   call and one transaction for a burst instead of one each.
   An outcome the store refuses (disk full) is kept in memory and written once it takes writes again
   (``leases.settle_call``): the message is not sent again because its result was not recorded.
A job is claimed by one worker only, on a lease it renews while it holds the job (``mtad.leases``); a job that
cannot be handled is given back at once; a crash leaves locks that the next start releases.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Protocol

from mtad.outbound import classify
from mtad.mail import dkim as dkim_mod
from mtad.outbound import dsn
from mtad.outbound import providers
from mtad.outbound.attempts import AttemptRecord, dsn_for, finished
from mtad.base.coalesce import Coalescer
from mtad.store.engagement import EngagementStore
from mtad.store.queue import AttemptDone, DeliveryJob, Pauses, QueueStore
from mtad.store.work import WorkStore
from mtad.config.schema import DeliveryConfig
from mtad.outbound.delivery import Connector, Destination, Session
from mtad.outbound.signer import DkimSigner, RenderError
from mtad.outbound.tracking import Tracking
from mtad.base.errors import PermFailure, StoreError, TempFailure
from mtad.store.leases import RETRY_AFTER_ERROR, RETRY_AFTER_STORE_ERROR, Leases, settle_call
from mtad.outbound.providers import ProviderPolicy, ShapingConfig
from mtad.outbound.returnpath import ReturnPaths
from mtad.net.resolver import Resolver
from mtad.outbound.throttle import Suspensions, limiters, rule_actions
from mtad.store.shaping import shares_shaping
from mtad.base.types import Outcome

log = logging.getLogger("mtad.scheduler")
PRELOAD_BODY = 64 * 1024  # bodies up to this size come with the claimed batch: at most max_inflight x 64 KB in memory
OUTCOME_BATCH = 256  # outcomes written together at most (those that came while the previous write ran)
# Seconds between two writes of outcomes at least (``Coalescer(interval=)``): under a steady drain those that come
# meanwhile share one transaction, whose cost (statements, a commit, its WAL flush) is mostly per transaction; an
# outcome after a quiet spell is written at once. The crash window (sent, not yet recorded: sent again) grows by
# as much.
OUTCOME_EVERY = 0.05


RENDER_AHEAD = 8  # copies of a per-recipient job rendered (in the workers) ahead of the one being sent


class Personal:
    """A job's stored body, to be rendered into one copy per recipient (``outbound.tracking``); ``first``: the
    task making the first recipient's copy and committing the message's link list, started at dispatch so that
    both are done (in the worker and in the store's next group commit) while the job waits for a connection."""

    __slots__ = ("raw", "first")

    def __init__(self, raw: bytes, first: asyncio.Task):
        self.raw = raw
        self.first = first


@dataclass
class Site:
    """Jobs waiting for one destination (a provider's set of MX hosts) and the sessions serving them."""

    key: tuple[str, tuple[str, ...]]
    policy: ProviderPolicy
    destination: Destination
    jobs: deque = field(default_factory=deque)  # (job, its signed body, or None when it is read at sending)
    connections: int = 0
    idle: int = 0  # connections waiting for more mail (``ProviderPolicy.idle_timeout``)
    starting: int = 0  # connection tasks that have no connection slot yet
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when jobs are queued


class SchedulerStore(QueueStore, WorkStore, EngagementStore, Protocol):
    """What the scheduler needs of the store: the queue, the leases of its claims (renewed, released), and the
    tracked messages of per-recipient copies."""


class Scheduler:
    def __init__(self, *, store: SchedulerStore, connector: Connector, resolver: Resolver, shaping: ShapingConfig,
                 config: DeliveryConfig, hostname: str, dkim_keys: dict[str, list[dkim_mod.DkimKey]],
                 smarthost_password: str | None = None, clock: Callable[[], float] = time.time,
                 dsn_policies: Mapping[str, dsn.Policy] | None = None, node_id: str = "",
                 return_paths: ReturnPaths | None = None):
        self.store = store
        self.connector = connector
        self.resolver = resolver
        self.shaping = shaping
        self.config = config
        self.hostname = hostname
        self.dkim_keys = dkim_keys
        self.smarthost_password = smarthost_password
        self.dsn_policies = dict(dsn_policies or {})  # sending domain -> its DSN policy; others: "smtp"
        self.return_paths = return_paths  # MAIL FROM and X-Mtad-Sid of each job (None: the job's own sender)
        self._smarthost_policy = smarthost_policy(config, shaping)
        self.clock = clock
        self.worker = node_id or f"{os.getpid()}-{os.urandom(3).hex()}"  # ``locked_by`` of its claims: the node
        self.leases = Leases(store, "deliveries", self.worker, clock)
        # In memory on one node; through the store's shared slots and rate when several nodes share it (throttle).
        self.limiter, self.rates = limiters(store, self.worker)
        self.suspensions = Suspensions()
        self.shares_actions = shares_shaping(store)  # automation rules' actions go to every node through the store
        self.sites: dict[tuple, Site] = {}
        self._applied: dict[tuple, Destination] = {}  # (destination, provider, tls, verify) -> with the policy
        self._policies: dict[tuple, ProviderPolicy] = {}  # (domain, MX hosts) -> its provider policy (``_policy``)
        self._policies_of: ShapingConfig | None = None  # the shaping those policies came from
        self.inflight = 0
        # An outcome frees room for one more job; the next claim waits for a batch's worth of room (a tenth of
        # max_inflight) and only follows outcomes while the last claim took all it asked for: on a store shared
        # over the network a claim is a few round trips on the writer, which a claim per outcome would hold up.
        self.claim_batch = max(1, config.max_inflight // 10)
        self._more_due = True  # the last claim was full: more rows may be due now
        self.paused = Pauses()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._recording: set[asyncio.Task] = set()  # outcomes being committed; awaited, never cancelled, at stop
        self.signer = DkimSigner(config.dkim_workers)  # worker processes, started at the first signature
        self.tracking: Tracking | None = None  # per-recipient copies (tracking, unsubscribe variables); app.py sets it
        self._tracked: dict[str, None] = {}  # queue ids whose tracked_messages row this node wrote (bounded)
        self._stopping = False
        self.counters = {"delivered": 0, "deferred": 0, "failed": 0}
        self._outcomes: Coalescer[AttemptDone, Exception | None] = Coalescer(
            self._write_outcomes, max_batch=OUTCOME_BATCH, interval=OUTCOME_EVERY)

    # --- main loop -------------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        renewing = asyncio.create_task(self.leases.run(), name="scheduler-leases")
        slots = asyncio.create_task(self.limiter.run(), name="scheduler-slots")
        unsubscribe = None
        if self.shares_actions:  # what other nodes' rules decided: now, and at each change (store.changes)
            unsubscribe = self.store.on_change("shaping", self._adopt_actions)  # type: ignore[attr-defined]
            await self._adopt_actions()
        try:
            await self._run()
        finally:
            renewing.cancel()
            slots.cancel()
            if unsubscribe is not None:
                unsubscribe()

    async def _adopt_actions(self) -> None:
        """Apply the automation rules' actions in force on the shared store (decided on any node)."""
        try:
            actions = await self.store.provider_actions()  # type: ignore[attr-defined]
        except StoreError as exc:
            log.warning("cannot read the providers suspended or throttled by other nodes: %s", exc)
            return
        self.suspensions.adopt(actions)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before claiming: a wake-up during the claim means another round
            try:
                room = self.config.max_inflight - self.inflight
                if room > 0:
                    now = self.clock()
                    until, held = self.leases.until(now), self.leases.held
                    claim = await self.store.claim_due(self.worker, now, room, preload_body=PRELOAD_BODY,
                                                       lease_until=until, skip=held)
                    self.paused = claim.pauses
                    self._more_due = len(claim.jobs) >= room
                    self.leases.claimed(job.id for job in claim.jobs)
                    for job, blocked in zip(claim.jobs, claim.suppressed):
                        self.inflight += 1
                        self._spawn(self._dispatch(job, blocked))
            except StoreError as exc:  # the loop must survive; the store may be briefly unavailable
                log.error("scheduler: cannot claim deliveries: %s", exc)
            except Exception:  # noqa: BLE001
                log.exception("scheduler loop error")
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.poll_interval.seconds)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._recording:
            await asyncio.wait(self._recording, timeout=10)
        await self.limiter.close()  # shared connection slots given back at once rather than left to expire
        shared = {**getattr(self.limiter, "stats", {}), **getattr(self.rates, "stats", {})}
        if shared:  # what shaping across the cluster cost this node (docs/scaling.md)
            log.info("shared shaping: %s", " ".join(f"{k}={v}" for k, v in shared.items()))
        await self.signer.close()

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    # --- per job ---------------------------------------------------------------------------------
    async def _dispatch(self, job: DeliveryJob, blocked: Mapping[str, str]) -> None:
        try:
            job = await self._settled_without_sending(job, blocked)
            if job is None:
                return
            try:
                destination, mx_hosts = await self._destination(job.domain)
            except (PermFailure, TempFailure) as exc:
                await self._finish(job, {r: classify.from_exception(exc) for r in job.recipients})
                return
            policy = self._smarthost_policy or self._policy(job.domain, mx_hosts)
            if policy.name in self.paused.provider or set(job.options.get("tags") or ()) & self.paused.tag:
                try:
                    await settle_call(self.store, lambda: self.store.hold(job.id),
                                      f"{job.queue_id}: hold of delivery {job.id}")
                finally:
                    self.leases.done(job.id)
                    self.inflight -= 1
                return
            destination = self._apply_policy(destination, policy, job)
            # Preloaded bodies are signed now, in parallel with the sessions sending earlier jobs; those whose
            # recipients each get a copy of their own are rendered and signed per recipient when sent.
            body: bytes | Personal | None = None
            if job.body is not None:
                body = self._prepare(job, job.body) if self._personal(job, job.body) else \
                    await self._sign(job, job.body)
            key = (policy.name, destination.hosts, destination.tls, destination.verify)
            site = self.sites.get(key)
            if site is None:
                site = self.sites[key] = Site(key, policy, destination)
            site.jobs.append((job, body))
            self._start_connections(site)
        except Exception as exc:  # noqa: BLE001 - give the job back rather than lose track of it
            if isinstance(exc, StoreError):  # given back once the store takes writes again, due again soon
                log.error("%s: dispatch failed: %s", job.queue_id, exc)
            else:
                log.exception("%s: dispatch failed", job.queue_id)
            await self._release(job, self.clock() + (RETRY_AFTER_STORE_ERROR if isinstance(exc, StoreError)
                                                     else RETRY_AFTER_ERROR))

    async def _settled_without_sending(self, job: DeliveryJob,
                                       blocked: Mapping[str, str]) -> DeliveryJob | None:
        """Jobs that end before any connection: too old, test mode, suppressed (``blocked``: recipient -> reason).
        The job still to send, if any."""
        now = self.clock()
        opts = job.options
        within = opts.get("deliver_within")
        if (within and now > job.created_at + within) or now > job.created_at + self.config.retry.max_age.seconds:
            outcome = Outcome("failed", 550, "5.4.7", "Delivery time expired", reason="old")
            await self._finish(job, {r: outcome for r in job.recipients})
            return None
        if opts.get("test_mode"):
            outcome = Outcome("delivered", 650, "2.0.0", "Test mode: message not sent")
            await self._finish(job, {r: outcome for r in job.recipients})
            return None
        if not blocked:
            return job
        outcomes = {r: Outcome("failed", 605, "5.0.0", f"Not delivering to a suppressed address ({reason})",
                               reason=reason) for r, reason in blocked.items()}
        rest = tuple(r for r in job.recipients if r not in blocked)
        if not rest:
            await self._finish(job, outcomes)
            return None
        # The suppressed recipients are settled and the rest stays claimed for sending, in one transaction, so
        # that a crash cannot lose the rest. Suppressed recipients never get a DSN (``dsn.build``).
        done = replace(job, recipients=tuple(outcomes))
        attempt = finished(done, AttemptRecord(outcomes, job.attempts + 1, None), now)
        await self.store.settle_some(job, self.worker, rest, attempt, now, dsn_for(self._bounce(), done, attempt, now))
        return replace(job, recipients=rest)

    async def _destination(self, domain: str) -> tuple[Destination, tuple[str, ...]]:
        cfg = self.config
        if cfg.smarthost is not None:
            sh = cfg.smarthost
            tls = {"starttls": "required", "implicit": "implicit", "none": "disabled"}[sh.tls]
            return Destination("smarthost", (sh.host,), sh.port, tls, sh.verify, sh.username,
                               self.smarthost_password), ()
        mx = await self.resolver.resolve_mx(domain)
        hosts = tuple(h.host for h in mx.hosts)
        return Destination(domain, hosts, cfg.port), hosts

    def _policy(self, domain: str, mx_hosts: tuple[str, ...]) -> ProviderPolicy:
        """``providers.for_destination``, remembered per (domain, MX hosts) while ``self.shaping`` stays the same
        object (a reload gives a new one): an unknown domain's policy is a new copy of the default each time."""
        if self._policies_of is not self.shaping:
            self._policies, self._policies_of = {}, self.shaping
        key = (domain, mx_hosts)
        policy = self._policies.get(key)
        if policy is None:
            if len(self._policies) >= 4096:
                self._policies.clear()
            policy = self._policies[key] = providers.for_destination(domain, list(mx_hosts), self.shaping)
        return policy

    def _apply_policy(self, dest: Destination, policy: ProviderPolicy, job: DeliveryJob) -> Destination:
        if dest.name == "smarthost":
            return dest
        tls = policy.tls
        verify = False
        if job.options.get("require_tls"):
            tls = "required"
        if tls == "required":
            verify = not job.options.get("skip_verification")
        key = (dest, policy.name, tls, verify)  # one Destination per combination, not a copy per job
        applied = self._applied.get(key)
        if applied is None:
            if len(self._applied) > 4096:
                self._applied.clear()
            applied = self._applied[key] = replace(
                dest, tls=tls, verify=verify, connect_timeout=policy.connect_timeout.seconds,
                command_timeout=policy.command_timeout.seconds, data_timeout=policy.data_timeout.seconds)
        return applied

    # --- sites and connections -------------------------------------------------------------------
    def _start_connections(self, site: Site) -> None:
        if site.idle:
            site.arrived.set()  # idle connections take queued jobs first
        limit = self._limits(site.policy)[0]
        while site.jobs and site.connections < limit and site.connections < len(site.jobs):
            site.connections += 1
            site.starting += 1
            self._spawn(self._connection(site))

    def _limits(self, policy: ProviderPolicy) -> tuple[int, object]:
        effective = self.suspensions.effective(policy)
        return effective.max_connections, effective.max_message_rate

    async def _connection(self, site: Site) -> None:
        policy = site.policy
        starting = True
        try:
            if not site.jobs:  # the site's open connections took them meanwhile: no slot taken for nothing
                return
            limit, _ = self._limits(policy)
            async with self.limiter.acquire(policy.name, limit):
                site.starting, starting = site.starting - 1, False
                if not site.jobs:
                    return
                if await self._defer_if_suspended(site):
                    return
                started = time.monotonic()
                try:
                    session = await self.connector.open(site.destination)
                except Exception as exc:  # noqa: BLE001 - the site is dead for this round
                    outcome = classify.from_exception(exc)
                    await self._check_automation(policy, outcome)
                    while site.jobs:
                        job, _ = site.jobs.popleft()
                        await self._finish(job, {r: outcome for r in job.recipients}, time.monotonic() - started)
                    return
                try:
                    await self._serve(site, session)
                finally:
                    await session.close()
        finally:
            if starting:
                site.starting -= 1
            site.connections -= 1
            if site.jobs:
                self._start_connections(site)
            elif site.connections == 0:
                self.sites.pop(site.key, None)

    async def _serve(self, site: Site, session: Session) -> None:
        policy = site.policy
        while session.usable and session.deliveries < policy.max_deliveries_per_connection:
            if not site.jobs and not await self._linger(site):
                return
            if await self._defer_if_suspended(site):
                return
            _, rate = self._limits(policy)
            if rate is not None:
                await self.rates.wait(policy.name, rate, len(site.jobs))
            if not site.jobs:
                return
            job, body = site.jobs.popleft()  # preloaded bodies were signed at dispatch; large ones are read here
            started = time.monotonic()
            try:
                if body is None:
                    loaded = await self.store.load_body(job.queue_id)
                    if loaded is None:  # deleted by an operator meanwhile
                        self.leases.done(job.id)
                        self.inflight -= 1
                        continue
                    body = self._prepare(job, loaded) if self._personal(job, loaded) else await self._sign(job, loaded)
                sender = job.sender if self.return_paths is None else self.return_paths.sender(job)
                if isinstance(body, Personal):
                    outcomes = await self._send_personal(session, job, body, sender)
                else:
                    outcomes = await session.send(sender, list(job.recipients), body)
            except Exception:  # noqa: BLE001 - give the job back rather than keep it locked; the session is suspect
                log.exception("%s: sending failed", job.queue_id)
                self._record(self._release(job, self.clock() + RETRY_AFTER_ERROR))
                return
            for outcome in outcomes.values():
                if outcome.kind != "delivered":
                    await self._check_automation(policy, outcome)
            # Recorded in the background: the session goes on with the next message while this outcome waits for
            # the store's next group commit. At-least-once either way: a crash before the commit resends it.
            self._record(self._finish(job, outcomes, time.monotonic() - started))

    async def _linger(self, site: Site) -> bool:
        """Keep an emptied connection open up to the policy's ``idle_timeout`` for more mail to the site, as
        Postfix's connection cache does (no new TCP and TLS handshake for the next message); True when a job
        came. Not while the scheduler stops, nor while another site of the provider waits for a connection slot
        (checked every 100 ms). The site's own tasks waiting for a slot do not count: they would only open a
        connection where this one is (on a shared store, a slot released and taken again each time)."""
        deadline = time.monotonic() + site.policy.idle_timeout.seconds
        site.idle += 1
        try:
            while not site.jobs:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping or self.limiter.waiting(site.policy.name) > site.starting:
                    return False
                site.arrived.clear()
                try:
                    await asyncio.wait_for(site.arrived.wait(), min(remaining, 0.1))
                except asyncio.TimeoutError:
                    pass
            return True
        finally:
            site.idle -= 1

    async def _defer_if_suspended(self, site: Site) -> bool:
        if not self.suspensions.is_suspended(site.policy.name):
            return False
        until = self.clock() + self.suspensions.remaining(site.policy.name)
        while site.jobs:
            job, _ = site.jobs.popleft()
            await self._release(job, until, f"provider {site.policy.name} suspended")
        return True

    async def _check_automation(self, policy: ProviderPolicy, outcome: Outcome) -> None:
        rule = providers.match_automation(f"{outcome.code} {outcome.enhanced} {outcome.message}", policy.name,
                                          self.shaping.automation)
        if rule is None:
            return
        if not self.suspensions.apply(policy.name, rule):
            return
        log.warning("provider %s: automation rule %r fired (%s) on reply %r", policy.name, rule.name, rule.action,
                    outcome.message[:200])
        if self.shares_actions:
            try:
                await self.store.put_provider_actions(rule_actions(policy.name, rule))  # type: ignore[attr-defined]
            except StoreError as exc:
                log.warning("provider %s: the %s of rule %r holds on this node only: %s", policy.name, rule.action,
                            rule.name, exc)

    # --- per-recipient copies (engagement tracking, unsubscribe variables) ----------------------------------
    def _personal(self, job: DeliveryJob, body: bytes) -> bool:
        return self.tracking is not None and self.tracking.personal(job, body)

    def _keys(self, job: DeliveryJob) -> list[dkim_mod.DkimKey]:
        keys = self.dkim_keys.get(job.sending_domain)
        return [] if not keys or job.options.get("dkim") is False else list(keys)

    async def _copy(self, job: DeliveryJob, raw: bytes, recipient: str, want_links: bool
                    ) -> tuple[bytes, list[str] | None]:
        """``recipient``'s copy, rendered and signed by a worker; the stored message, signed, if rendering fails."""
        assert self.tracking is not None
        try:
            return await self.signer.render(raw, self._keys(job), self.tracking.spec(job, recipient), want_links)
        except RenderError as exc:
            log.error("%s: could not render the copy of <%s>, sending the message as stored: %s", job.queue_id,
                      recipient, exc)
            return await self._dkim(job, raw), None  # raw was stamped by _prepare

    def _prepare(self, job: DeliveryJob, raw: bytes) -> Personal:
        """``raw`` to send a copy per recipient, its first copy and the message's tracked row under way."""
        if self.return_paths is not None:  # X-Mtad-Sid before rendering: every copy carries it, signed
            raw = self.return_paths.stamp(job, raw)
        task = asyncio.create_task(self._first_copy(job, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a job given back never awaits it
        return Personal(raw, task)

    async def _first_copy(self, job: DeliveryJob, raw: bytes) -> tuple[bytes, list[str] | None]:
        """The first recipient's copy, after the message's tracked row (its link list, its events' fields) is
        committed: once per message on this node (``_tracked``), before any copy leaves."""
        want_links = job.queue_id not in self._tracked
        copy, links = await self._copy(job, raw, job.recipients[0], want_links)
        if want_links:
            await self._track(job, links)
        return copy, links

    async def _send_personal(self, session: Session, job: DeliveryJob, body: Personal,
                             sender: str) -> dict[str, Outcome]:
        """One transaction per recipient, each with its own copy (rendered ``RENDER_AHEAD`` ahead, the first at
        dispatch); the recipients left when the session breaks are deferred."""
        recipients = list(job.recipients)
        raw = body.raw
        started: deque[asyncio.Future] = deque([body.first])

        def start(i: int) -> None:
            started.append(asyncio.ensure_future(self._copy(job, raw, recipients[i], False)))
        for i in range(1, min(RENDER_AHEAD, len(recipients))):
            start(i)
        following = len(started)
        outcomes: dict[str, Outcome] = {}
        try:
            for rcpt in recipients:
                copy, _ = await started.popleft()
                if following < len(recipients):
                    start(following)
                    following += 1
                if not session.usable:
                    outcomes[rcpt] = classify.from_exception(
                        TempFailure("the connection closed before this recipient's copy was sent"),
                        mx_host=session.host)
                    continue
                outcomes.update(await session.send(sender, [rcpt], copy))
        finally:
            for future in started:
                future.cancel()
        return outcomes

    async def _track(self, job: DeliveryJob, links: list[str] | None) -> None:
        assert self.tracking is not None
        await self.store.track_message(self.tracking.tracked(job, links, self.clock()))
        self._tracked[job.queue_id] = None
        if len(self._tracked) > 100_000:
            del self._tracked[next(iter(self._tracked))]

    async def _sign(self, job: DeliveryJob, body: bytes) -> bytes:
        """The message to send as one copy: stamped with its return-path token, DKIM-signed."""
        if self.return_paths is not None:
            body = self.return_paths.stamp(job, body)
        return await self._dkim(job, body)

    async def _dkim(self, job: DeliveryJob, body: bytes) -> bytes:
        keys = self.dkim_keys.get(job.sending_domain)
        if not keys or job.options.get("dkim") is False:
            return body
        try:
            return await self.signer.sign(body, keys)
        except ValueError as exc:  # e.g. no From header: RFC 6376 5.4 forbids signing; send unsigned
            log.warning("%s: not DKIM-signed: %s", job.queue_id, exc)
            return body

    # --- recording -------------------------------------------------------------------------------
    async def _finish(self, job: DeliveryJob, outcomes: dict[str, Outcome], seconds: float = 0.0) -> None:
        now = self.clock()
        attempt_no = job.attempts + 1
        deferred = any(o.kind == "deferred" for o in outcomes.values())
        retry_at = None
        if deferred:
            retry_at = now + self.config.retry.delay(attempt_no)
            deadline = job.created_at + self.config.retry.max_age.seconds
            within = job.options.get("deliver_within")
            if within:
                deadline = min(deadline, job.created_at + within)
            if retry_at > deadline:
                retry_at = None
        attempt = finished(job, AttemptRecord(outcomes, attempt_no, retry_at, seconds), now)
        bounce = dsn_for(self._bounce(), job, attempt, now)
        try:  # kept in memory and tried again while the store refuses it: never sent again for want of a record
            failure = await self._outcomes.submit(AttemptDone(job, attempt, now, bounce))
            if failure is not None:
                raise failure
        except Exception as exc:  # noqa: BLE001 - the store closed (the next start releases the row) or a bug
            log.error("%s: could not record the outcome of delivery %d: %s", job.queue_id, job.id, exc,
                      exc_info=not isinstance(exc, StoreError))
        finally:
            self.leases.done(job.id)
            self.inflight -= 1
        for rcpt, o in outcomes.items():
            kind = "deferred" if o.kind == "deferred" and retry_at else ("failed" if o.kind != "delivered" else o.kind)
            self.counters[kind] = self.counters.get(kind, 0) + 1
            text = o.message if o.message.startswith(o.enhanced) else f"{o.enhanced} {o.message}"
            log.info("%s: to=<%s> relay=%s status=%s (%d %s)%s", job.queue_id, rcpt, o.mx_host or "none", kind,
                     o.code, text[:200], f" reason={o.reason}" if o.reason else "")
        if self._more_due and self.config.max_inflight - self.inflight >= self.claim_batch:
            self.wake()  # room for a batch while rows wait: claim now rather than at the next poll

    async def _write_outcomes(self, items: list[AttemptDone]) -> list[Exception | None]:
        """Write a burst of outcomes as one (``finish_attempts``), tried again while the store fails (``settle_call``).
        If the write fails by itself (a bug, not the store), each outcome is written alone: only its own fails.
        One result per item: None when written, else its exception."""
        what = (f"{items[0].job.queue_id}: outcome of delivery {items[0].job.id}" if len(items) == 1
                else f"outcomes of {len(items)} deliveries")
        try:
            await settle_call(self.store, lambda: self.store.finish_attempts(items), what)
            return [None] * len(items)
        except StoreError:
            raise  # the store closed: every caller of the batch gets it
        except Exception as exc:  # noqa: BLE001 - whose it was is found below
            if len(items) == 1:
                return [exc]
        results: list[Exception | None] = []
        for item in items:
            try:
                await settle_call(self.store, lambda item=item: self.store.finish_attempts([item]),
                                  f"{item.job.queue_id}: outcome of delivery {item.job.id}")
                results.append(None)
            except StoreError:
                raise
            except Exception as exc:  # noqa: BLE001 - this outcome's own failure
                results.append(exc)
        return results

    def _bounce(self):
        """The DSN builder of permanent failures (each sending domain's policy; ``attempts.dsn_for``), or None when
        DSNs are off."""
        if not self.config.dsn:
            return None
        policies = self.dsn_policies
        return lambda job, failed, original_headers: dsn.build(
            job, failed, self.hostname, original_headers, policy=policies.get(job.sending_domain, "smtp"))

    async def _release(self, job: DeliveryJob, at: float, reply: str = "") -> None:
        try:
            await settle_call(self.store, lambda: self.store.release(job.id, at, reply),
                              f"{job.queue_id}: release of delivery {job.id}")
        except Exception as exc:  # noqa: BLE001 - the store closed: the next start releases the row
            log.error("%s: could not release delivery %d: %s", job.queue_id, job.id, exc,
                      exc_info=not isinstance(exc, StoreError))
        finally:
            self.leases.done(job.id)
            self.inflight -= 1


def smarthost_policy(config: DeliveryConfig, shaping: ShapingConfig) -> ProviderPolicy | None:
    """The one policy of every delivery through the configured smarthost (None without one), named ``smarthost``:
    its ``max_connections`` and ``max_message_rate`` (none: unlimited) from ``delivery.smarthost``, the rest
    (deliveries per connection, idle_timeout) from the shaping file's default. Provider shaping does not apply:
    the relay is one destination, whatever the recipients' domains."""
    sh = config.smarthost
    if sh is None:
        return None
    return replace(shaping.default, name="smarthost", max_connections=sh.max_connections,
                   max_message_rate=sh.max_message_rate)
