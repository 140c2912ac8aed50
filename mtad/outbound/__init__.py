"""mtad.outbound."""
