"""mtad.mail."""
