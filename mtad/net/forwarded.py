"""The client address of an HTTP request that may have come through reverse proxies (``X-Forwarded-For``).

``ClientAddress(trusted)``: ``trusted`` are the networks of the proxies in front of mtad
(``tracking.trusted_proxies``). ``of(peer, forwarded_for)`` is the client address:

- the TCP peer, when it is not in a trusted network: ``X-Forwarded-For`` is then never read (anyone can send it);
- else the right-most address of ``X-Forwarded-For`` (all its fields, in order, as one list) that is not in a
  trusted network, walking right to left as nginx's ``real_ip_recursive on`` does: each trusted proxy appended
  the address it got the request from, so everything left of the first untrusted one was written by the client
  and is not believed;
- when every listed address is trusted, the left-most one; when the header is absent or an entry is not an IP
  address (``unknown``, a host name, garbage), the last trusted hop seen (the peer, or the entry right of it).

Addresses are compared as IP addresses (IPv4-mapped IPv6 as IPv4, a ``[v6]:port`` or ``v4:port`` form
accepted). Pure, cached per distinct input; ``client_address(trusted)`` the one instance per list of networks.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Iterable

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network
_Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> _Addr | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


class ClientAddress:
    """See the module doc."""

    def __init__(self, trusted: Iterable[str] = ()):
        self.trusted: tuple[_Net, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in trusted)
        self.of = functools.lru_cache(maxsize=4096)(self._of)

    def _trusted(self, address: _Addr) -> bool:
        return any(address.version == n.version and address in n for n in self.trusted)

    def _of(self, peer: str, forwarded_for: tuple[str, ...] = ()) -> str:
        here = _address(peer) if self.trusted else None
        if here is None or not self._trusted(here):
            return peer
        hops = [h for field in forwarded_for for h in field.split(",") if h.strip()]
        for hop in reversed(hops):
            found = _address(hop)
            if found is None:
                break
            here = found
            if not self._trusted(found):
                break
        return str(here)


@functools.lru_cache(maxsize=8)
def client_address(trusted: tuple[str, ...]) -> ClientAddress:
    return ClientAddress(trusted)
