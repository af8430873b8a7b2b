"""Shared pieces of the tests of edupulse_events.testing: a bounded asyncio runner and a fail-fast nats-py connect."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

__all__ = ["FAST", "connect", "pid_alive", "run"]

T = TypeVar("T")

# Fail fast instead of nats-py's default 2 s x 60 reconnect attempts.
FAST = {"connect_timeout": 2, "allow_reconnect": False, "max_reconnect_attempts": 0}


def run(coro: Awaitable[T], timeout: float = 30.0) -> T:
    """Run one coroutine on a fresh event loop with an overall deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def connect(servers: str | list[str], **options: Any) -> Client:
    for key, value in FAST.items():
        options.setdefault(key, value)
    return await nats.connect(servers, **options)
