"""mtad.inbound."""
