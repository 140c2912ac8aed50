"""Interim bridge (issue 11): the event writing the store's work and webhook methods need, still in
``mtad.events.record`` until the store's own ``store/events.py`` holds it. The one import of ``mtad.events`` from
the store goes through here (one import-linter ignore), so that move changes this file only."""

from __future__ import annotations

from mtad.events.record import EVENT_DATA, add_webhook_work, invalidate_webhooks, record, webhook_id

__all__ = ["EVENT_DATA", "add_webhook_work", "invalidate_webhooks", "record", "webhook_id"]
