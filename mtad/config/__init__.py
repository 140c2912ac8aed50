"""mtad.config: the configuration: its schema as frozen dataclasses, strict loading, the embedded default.

Job: ``schema`` (every key, its type and default), ``load`` (YAML to dataclasses, unknown keys are errors,
secrets from files), ``demo`` (what ``mtad run`` uses without a file), ``providers.yaml`` (shipped shaping).
May import: ``mtad.base``, ``mtad.mail``, ``mtad.net``. (Today ``schema`` also checks route expressions with
``mtad.inbound.router``: a known crossing, listed in pyproject.toml, to be removed.)
Contract: a ``Config`` is immutable and valid once built; policy lives here as data, mechanism elsewhere.
"""
