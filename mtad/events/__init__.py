"""mtad.events."""
