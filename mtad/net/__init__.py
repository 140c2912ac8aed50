"""mtad.net."""
