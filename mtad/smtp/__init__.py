"""mtad.smtp."""
