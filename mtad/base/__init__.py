"""mtad.base."""
