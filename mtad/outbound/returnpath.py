"""The envelope sender a delivery uses, and the header that names the message: policy for ``mail.returnpath``.

A user's message from one of mtad's sending domains goes out with the return path ``bounce+TOKEN@<sending
domain>`` when its domain's ``return_path`` policy says ``verp`` (``auto``: when mail goes to the recipients' MX
hosts; through a smarthost the message's own sender, which the relay may insist on), so that a DSN the receiver
sends later comes back to mtad's MX listener and is matched to the message (``inbound.reports``). Every such
message also carries ``X-Mtad-Sid: TOKEN`` (added before DKIM signing), for feedback reports whose original no
longer shows the return path.

Left alone, whatever the policy: the null sender (a DSN mtad made, ``outbound.dsn``), forwards of inbound mail
(their SRS sender, ``mail.srs``), and mail of a domain that is not one of mtad's sending domains (its return path
would not come back). The DSN mtad makes itself still goes to the message's own sender: only MAIL FROM changes,
never the job's sender, its events or its DSN.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping

from mtad.mail import returnpath
from mtad.outbound.dsn import is_dsn
from mtad.store.queue import DeliveryJob

Policy = Literal["auto", "verp", "sender"]


class ReturnPaths:
    def __init__(self, key: bytes, policies: Mapping[str, Policy], *, smarthost: bool,
                 is_sending_domain: Callable[[str], bool]):
        self.key = key
        self.policies = dict(policies)  # sending domain -> policy; others: auto
        self.smarthost = smarthost
        self.is_sending_domain = is_sending_domain
        self._tokens: dict[tuple[str, str | None], str] = {}  # the last jobs' tokens: stamp, then sender, reuse it

    def _ours(self, job: DeliveryJob) -> bool:
        """A user's message of one of mtad's sending domains (see the module doc)."""
        return bool(job.sender) and job.direction == "outbound" and not is_dsn(job) \
            and self.is_sending_domain(job.sending_domain)

    def _token(self, job: DeliveryJob) -> str:
        which = (job.queue_id, job.recipients[0] if len(job.recipients) == 1 else None)
        token = self._tokens.get(which)
        if token is None:
            if len(self._tokens) >= 4096:
                del self._tokens[next(iter(self._tokens))]
            token = self._tokens[which] = returnpath.token(self.key, *which)
        return token

    def verp(self, domain: str) -> bool:
        policy = self.policies.get(domain, "auto")
        return policy == "verp" or (policy == "auto" and not self.smarthost)

    def sender(self, job: DeliveryJob) -> str:
        """MAIL FROM for ``job``: its return path, or its own sender."""
        if not self._ours(job) or not self.verp(job.sending_domain):
            return job.sender
        return f"{returnpath.PREFIX}{self._token(job)}@{job.sending_domain}"

    def stamp(self, job: DeliveryJob, body: bytes) -> bytes:
        """``body`` with ``X-Mtad-Sid`` when ``job`` is a user's message of a sending domain: right after the
        trace fields at its top (RFC 5321 4.4: they stay first), before the message's own header fields."""
        if not self._ours(job):
            return body
        at = after_trace(body)
        return body[:at] + f"{returnpath.HEADER}: {self._token(job)}\r\n".encode("ascii") + body[at:]


def after_trace(body: bytes, limit: int = 100) -> int:
    """The offset just after the ``Received:`` fields (with their folded lines) that open ``body`` (0: none),
    looking at ``limit`` lines at most."""
    at = 0
    for _ in range(limit):
        end = body.find(b"\n", at)
        if end < 0:
            break
        line = body[at:at + 9]
        if not (line[:9].lower() == b"received:" or (at > 0 and line[:1] in (b" ", b"\t"))):
            break
        at = end + 1
    return at
