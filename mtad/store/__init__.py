"""mtad.store."""
