"""mtad.ingress."""
