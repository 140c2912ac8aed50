"""The API's feature modules, in the order their routes are added. Each has ``setup(app)``."""

from __future__ import annotations

from typing import Callable

from aiohttp import web


def all_features() -> list[Callable[[web.Application], None]]:
    features: list[Callable[[web.Application], None]] = []
    return features
