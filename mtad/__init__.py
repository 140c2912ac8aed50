"""mtad: a standalone SMTP MTA and inbound mail router with a Mailgun-compatible API."""

__version__ = "0.1.0"
