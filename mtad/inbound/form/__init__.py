"""mtad.inbound.form."""
