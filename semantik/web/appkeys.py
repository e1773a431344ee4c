"""Typed keys for what the aiohttp application holds."""

from __future__ import annotations

import weakref

from aiohttp import web
from arq.connections import ArqRedis

from semantik.events.hub import EventHub
from semantik.runtime import Runtime
from semantik.settings import Settings
from semantik.web.metrics import Metrics
from semantik.web.origins import HostPolicy

SETTINGS = web.AppKey("settings", Settings)
RUNTIME = web.AppKey("runtime", Runtime)
QUEUE = web.AppKey("queue", ArqRedis)
HUB = web.AppKey("hub", EventHub)
SOCKETS = web.AppKey("sockets", weakref.WeakSet[web.WebSocketResponse])
METRICS = web.AppKey("metrics", Metrics)
HOSTS = web.AppKey("hosts", HostPolicy)
