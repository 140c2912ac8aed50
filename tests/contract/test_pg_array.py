"""``store.dialect.pg_array``: a list of values as one text parameter a PostgreSQL statement casts to an array
(the claims, outcome bursts and text index pass their ids and columns so) reads back on the server exactly as the
list itself, whatever the strings hold (quotes, backslashes, braces, commas, ``NULL`` as text, empty, unicode)."""

from __future__ import annotations

import math

import pytest

from mtad.store.dialect import pg_array
from tests.support.stores import backend_store  # noqa: F401 (fixture)

TEXTS = ["plain", "", "NULL", "null", 'a "quoted" word', "back\\slash\\", "{braces},commas", " spaced ",
         "Grüße ünïcode ✓", '["a@b.test", "c@d.test"]', "\\\"", "tab\there\nnewline"]


def test_arrays_read_back_as_the_lists_they_were(backend_store):
    if backend_store.backend != "postgresql":
        pytest.skip("an array parameter is PostgreSQL's")
    backend_store()
    conn = backend_store.direct()
    ints = [1, -2, 0, 2 ** 62, 9007199254740993]
    floats = [0.0, -1.5, 1733587200.123456, 1e-300, 1.7976931348623157e308, math.inf, -math.inf]
    mixed = ["x", None, 'y"', None]
    row = conn.execute("SELECT ?::text[], ?::bigint[], ?::float8[], ?::text[], ?::int[], ?::bigint[], ?::text[]",
                       (pg_array(TEXTS), pg_array(ints), pg_array(floats), pg_array(mixed), pg_array([3, 4]),
                        pg_array([]), pg_array(["only"]))).fetchone()
    assert list(row) == [TEXTS, ints, floats, mixed, [3, 4], [], ["only"]]
    # each text element is one element: none split by a comma, none read as NULL
    assert conn.execute("SELECT cardinality(?::text[]), array_position(?::text[], NULL)",
                        (pg_array(TEXTS), pg_array(TEXTS))).fetchone() == (len(TEXTS), None)
