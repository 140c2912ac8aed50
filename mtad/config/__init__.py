"""mtad.config."""
