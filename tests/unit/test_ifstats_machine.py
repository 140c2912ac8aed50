"""An InboxFirst campaign's figures leave machines' opens and clicks (``flags.is-machine``, stored with severity
``machine``) out of the unique figures and count them in the totals (``events.ifstats``)."""

from __future__ import annotations

from mtad.events import ifstats
from mtad.store.dispatch import CampaignFigures, EventCount, SentCount


def test_summary_counts_machine_opens_and_clicks_in_totals_only():
    figures = CampaignFigures(
        sent=(SentCount(1, "html", False, 4),),
        events=(EventCount(1, "delivered", "", 4, 4), EventCount(1, "opened", "", 3, 2),
                EventCount(1, "opened", "machine", 4, 4), EventCount(1, "clicked", "machine", 2, 2)),
        in_queue=(), unique_by_link=())
    s = ifstats.summary(figures)
    assert (s["opens_total"], s["opens_unique"], s["duplicate_opens"], s["open_rate"]) == (7, 2, 5, 0.5)
    assert (s["clicks_total"], s["clicks_unique"], s["click_rate"]) == (2, 0, 0.0)

