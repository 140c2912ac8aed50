"""An emptied connection's wait for more mail (``Scheduler._linger``): it gives its slot up early only for another
site of the provider, never for its own site's connection tasks waiting for a slot (on a shared store those are
"waiting" during every slot's round trip: closing for them only reopened a connection where one was)."""

import asyncio
from types import SimpleNamespace

from mtad.outbound.providers import ProviderPolicy
from mtad.outbound.scheduler import Scheduler, Site
from mtad.outbound.delivery import Destination
from mtad.base.rates import Duration


class Limiter:
    def __init__(self) -> None:
        self.waiters = 0

    def waiting(self, key: str) -> int:
        return self.waiters


def site(idle_timeout: float) -> Site:
    policy = ProviderPolicy(name="p", idle_timeout=Duration(idle_timeout))
    return Site(("p", ("mx.test",)), policy, Destination("d.test", ("mx.test",), 25))


async def linger(limiter: Limiter, s: Site) -> tuple[bool, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    kept = await Scheduler._linger(SimpleNamespace(_stopping=False, limiter=limiter), s)  # type: ignore[arg-type]
    return kept, loop.time() - started


async def test_its_own_sites_tasks_waiting_for_a_slot_do_not_close_an_idle_connection():
    limiter, s = Limiter(), site(0.5)
    s.starting = limiter.waiters = 2  # two connection tasks of this site are taking a slot
    kept, waited = await linger(limiter, s)
    assert not kept and waited >= 0.45  # waited its whole idle_timeout


async def test_a_job_arriving_while_own_tasks_wait_is_taken_by_the_idle_connection():
    limiter, s = Limiter(), site(5)
    s.starting = limiter.waiters = 1
    asyncio.get_running_loop().call_later(0.15, lambda: (s.jobs.append(("job", None)), s.arrived.set()))
    kept, waited = await linger(limiter, s)
    assert kept and waited < 1


async def test_another_site_waiting_for_a_slot_closes_the_idle_connection_at_once():
    limiter, s = Limiter(), site(5)
    s.starting, limiter.waiters = 1, 2  # one of the waiters is another site's
    kept, waited = await linger(limiter, s)
    assert not kept and waited < 0.5


def test_a_destinations_policy_is_made_once_per_shaping():
    """``Scheduler._policy``: an unknown domain's policy (a copy of the default under its name) is made once, not
    per message, and made again from a new shaping object (a reload)."""
    from mtad.outbound.providers import ShapingConfig
    first = ShapingConfig(default=ProviderPolicy(max_connections=7))
    owner = SimpleNamespace(shaping=first, _policies={}, _policies_of=None)
    policy = Scheduler._policy(owner, "d.test", ("mx.d.test",))  # type: ignore[arg-type]
    assert (policy.name, policy.max_connections) == ("d.test", 7)
    assert Scheduler._policy(owner, "d.test", ("mx.d.test",)) is policy  # type: ignore[arg-type]
    owner.shaping = ShapingConfig(default=ProviderPolicy(max_connections=3))
    assert Scheduler._policy(owner, "d.test", ("mx.d.test",)).max_connections == 3  # type: ignore[arg-type]
