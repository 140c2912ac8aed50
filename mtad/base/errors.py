"""The exception tree of mtad.

    MtadError
    ├── ConfigError          bad configuration; message names the key path
    ├── StoreError           the durable store could not commit or read
    │   └── StoreUnavailable the store's server cannot be reached (PostgreSQL down, connection lost)
    ├── OptionError          a sending option (X-Mailgun-* / o:) is malformed; names the option
    ├── RouteSyntaxError     a route expression does not parse; names the position
    └── DeliveryError
        ├── TempFailure      retry later (4xx, timeouts, connection and TLS errors, SERVFAIL)
        └── PermFailure      final (5xx, NXDOMAIN, null MX)

Clients get a clear generic reply; the log gets the detail.
"""

from __future__ import annotations


class MtadError(Exception):
    """Base of every error mtad raises on purpose."""


class ConfigError(MtadError):
    """Configuration is invalid. The message starts with the key path, e.g. ``limits.max_size: ...``."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class StoreError(MtadError):
    """The store could not durably commit (disk full, I/O error) or read."""


class StoreUnavailable(StoreError):
    """The store's database server cannot be reached (down, restarting, the connection broke): nothing was
    committed; the store connects again by itself at the next write or read."""


class OptionError(MtadError):
    """A sending option is malformed. ``option`` is the header or API field name."""

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


class RouteSyntaxError(MtadError):
    """A route expression or action does not parse. ``position`` is the 1-based column."""

    def __init__(self, problem: str, position: int, text: str = ""):
        self.problem = problem
        self.position = position
        self.text = text
        super().__init__(f"{problem} at column {position}")


class DeliveryError(MtadError):
    """A delivery attempt failed."""


class TempFailure(DeliveryError):
    """Retry later."""


class PermFailure(DeliveryError):
    """Do not retry. ``enhanced`` is the RFC 3463 status its bounce carries: 5.1.2 when the destination domain
    itself is bad (does not exist, accepts no mail, is not a domain name), 5.4.4 when no route to it was found."""

    def __init__(self, message: str, enhanced: str = "5.4.4"):
        super().__init__(message)
        self.enhanced = enhanced
