"""Stats from counters: buckets, shapes, grouping; counters written by the store as it records events (on every
backend: ``tests.support.stores``)."""

import pytest

from mtad.events import shape
from mtad.events import stats
from mtad.events.query import QueryError, parse_time
from mtad.store import events
from tests.support.stores import backend_store  # noqa: F401 (fixture)

DAY = 86400
T0 = parse_time("Mon, 01 Jan 2024 00:00:00 +0000", "t")


@pytest.fixture
def store(backend_store):
    return backend_store()


@pytest.fixture
def conn(store, backend_store):
    """Events recorded on a connection of their own (each written at once): what the store then reads."""
    return backend_store.direct()


def ev(kind, ts, rcpt="a@gmail.com", tags=(), **extra):
    return shape.base_event(kind, timestamp=ts, recipient=rcpt, queue_id="q", message={"headers": {}},
                             options={"tags": list(tags)}, envelope={}, flags={}, extra=extra)


def test_buckets_align_to_utc_calendar():
    assert stats.bucket_start(T0 + 3 * DAY + 5000, "day") == T0 + 3 * DAY
    assert stats.bucket_start(T0 + 40 * DAY, "month") == parse_time("Thu, 01 Feb 2024 00:00:00 +0000", "t")
    assert stats.next_bucket(parse_time("Sun, 01 Dec 2024 00:00:00 +0000", "t"), "month") == \
        parse_time("Wed, 01 Jan 2025 00:00:00 +0000", "t")
    rng = stats.parse_range({"end": str(T0 + 10 * DAY), "duration": "3d"}, 0)
    assert (rng.start, rng.resolution) == (T0 + 7 * DAY, "day")
    assert stats.parse_range({"end": str(T0 + 45 * DAY), "duration": "1m", "resolution": "month"}, 0).start == T0
    with pytest.raises(QueryError):
        stats.parse_range({"resolution": "week"}, 0)
    with pytest.raises(QueryError):
        stats.check_events(["bounced"])


async def test_totals_per_resolution_and_tag(conn, store):
    for day in range(3):
        for _ in range(day + 1):
            events.record(conn, "example.com", ev("accepted", T0 + day * DAY + 100, tags=["news"], direction="outgoing"))
            events.record(conn, "example.com", ev("delivered", T0 + day * DAY + 200, tags=["news"]))
    events.record(conn, "example.com", ev("failed", T0 + 7200, severity="permanent", reason="suppress-bounce"))
    events.record(conn, "example.com", ev("failed", T0 + 7200, severity="permanent", reason="old"))
    events.record(conn, "example.com", ev("failed", T0 + 7200, severity="temporary", reason="generic"))
    events.record(conn, "other.org", ev("failed", T0 + 7200, severity="permanent", reason="brand-new-reason"))
    events.record(conn, "other.org", ev("delivered", T0 + 100, rcpt="b@yahoo.com"))
    rng = stats.Range(T0, T0 + 3 * DAY - 1, "day")
    days = await stats.totals(store, ["accepted", "delivered", "failed"], rng, domains=["example.com"])
    assert [d["delivered"]["total"] for d in days] == [1, 2, 3]
    assert [d["accepted"]["outgoing"] for d in days] == [1, 2, 3]
    assert days[0]["time"] == "Mon, 01 Jan 2024 00:00:00 UTC"
    failed = days[0]["failed"]
    assert failed["temporary"]["total"] == 1
    assert failed["permanent"]["total"] == 2 and failed["permanent"]["suppress-bounce"] == 1 and failed["permanent"]["old"] == 1
    other = await stats.totals(store, ["failed"], rng, domains=["other.org"])
    assert other[0]["failed"]["permanent"]["brand-new-reason"] == 1 and other[0]["failed"]["permanent"]["total"] == 1
    hours = await stats.totals(store, ["delivered"], stats.Range(T0, T0 + DAY - 1, "hour"), domains=["example.com"])
    assert len(hours) == 24 and hours[0]["delivered"]["total"] == 1
    month = await stats.totals(store, ["delivered"], stats.Range(T0, T0 + 3 * DAY, "month"), domains=None)
    assert month == [{"time": "Mon, 01 Jan 2024 00:00:00 UTC", "delivered": {"smtp": 7, "http": 0, "optimized": 0,
                                                                              "total": 7}}]
    tagged = await stats.totals(store, ["delivered"], rng, domains=["example.com"], tag="news")
    assert sum(d["delivered"]["total"] for d in tagged) == 6


async def test_grouping(conn, store):
    events.record(conn, "example.com", ev("delivered", T0 + 10, tags=["a"]))
    events.record(conn, "example.com", ev("delivered", T0 + 10, rcpt="c@yahoo.com", tags=["b"]))
    events.record(conn, "other.org", ev("delivered", T0 + 10))
    rng = stats.Range(T0, T0 + DAY, "day")
    by_domain = await stats.grouped(store, ["delivered"], rng, group="domain", filters={}, domains=None)
    assert [(g["domain"], g["delivered"]["total"]) for g in by_domain] == [("example.com", 2), ("other.org", 1)]
    by_tag = await stats.grouped(store, ["delivered"], rng, group="tag", filters={"domain": ["example.com"]}, domains=None)
    assert [(g["tag"], g["delivered"]["total"]) for g in by_tag] == [("a", 1), ("b", 1)]
    by_provider = await stats.grouped(store, ["delivered"], rng, group="provider", filters={}, domains=["example.com"])
    assert [(g["provider"], g["delivered"]["total"]) for g in by_provider] == [("gmail.com", 1), ("yahoo.com", 1)]
    total = await stats.grouped(store, ["delivered"], rng, group="total", filters={"tag": ["a"]}, domains=None)
    assert total[0]["delivered"]["total"] == 1
    assert (await stats.providers(store, "example.com"))["yahoo.com"]["delivered"] == 1
    with pytest.raises(QueryError):
        await stats.grouped(store, ["delivered"], rng, group="provider", filters={"tag": ["a"]}, domains=None)
    assert [t["tag"] for t in await stats.list_tags(store, "example.com", limit=10)] == ["a", "b"]
    assert [t["tag"] for t in await stats.list_tags(store, "example.com", limit=10, pivot="a")] == ["b"]
    assert await stats.tag_info(store, "example.com", "a") == {
        "tag": "a", "description": "", "first-seen": "2024-01-01T00:00:00Z", "last-seen": "2024-01-01T00:00:00Z"}


@pytest.mark.parametrize("params", [{"start": "0", "end": "253402300799", "resolution": "day"},
                                    {"start": "0", "resolution": "hour"},
                                    {"end": "1700000000", "duration": "10001d"}])
def test_a_range_of_more_than_max_buckets_is_refused(params):
    with pytest.raises(QueryError, match="buckets"):
        stats.parse_range(params, 1_700_000_000)


def test_the_last_buckets_before_year_10000_end_the_series():
    rng = stats.parse_range({"start": "253402214400", "end": "253402300799", "resolution": "hour"}, 0)
    assert stats.next_bucket(253402297200, "hour") == 253402300800  # the hour after 9999's last: a bound, no error
    assert stats.next_bucket(253402214400, "month") == 253402300800
    assert rng.resolution == "hour"
