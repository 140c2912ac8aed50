"""Compatibility names of the former ``events.record``: building is ``mtad.events.shape``, writing is
``mtad.store.events``. Kept only while the HTTP-work modules (forwards, store(), webhooks) move to typed store
methods; new code imports the two modules above."""

from __future__ import annotations

from mtad.events.shape import (accepted_events, base_event, delivery_event, message_part,  # noqa: F401
                               new_event_id, outcome_status)
from mtad.base.types import domain_of  # noqa: F401
from mtad.store.events import (EVENT_DATA, INLINE_VARIABLES, MAX_EVENT_BYTES, add_webhook_work,  # noqa: F401
                               bounded, bounded_text, invalidate_webhooks, record, stat_key, stat_keys,
                               webhook_id, webhook_rows, webhook_targets, write_events, write_variables,
                               write_webhook_rows)
