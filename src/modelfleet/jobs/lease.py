"""Keeping deliveries out of other consumers' hands while they are worked on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from modelfleet.broker.broker import Broker, Delivery

log = logging.getLogger("modelfleet.jobs")


class Lease:
    """Extends ``deliveries`` every third of the broker's visibility timeout until ``stop``.

    No task exists until the first extension is due, so work that ends well within the timeout
    (nearly all of it) costs one timer, not a task per delivery.
    """

    def __init__(self, broker: Broker, deliveries: Sequence[Delivery]) -> None:
        self._broker = broker
        self._deliveries = list(deliveries)
        self._loop = asyncio.get_running_loop()
        self._interval_s = broker.visibility_timeout_s / 3
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(self._interval_s, self._due)

    def _due(self) -> None:
        if not self._stopped:
            self._task = self._loop.create_task(self._extend())

    async def _extend(self) -> None:
        outcomes = await asyncio.gather(
            *(self._broker.extend(d) for d in self._deliveries), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                # The delivery may come back to another consumer; results stay idempotent.
                log.warning("extending a delivery failed: %s", outcome)
        if not self._stopped:
            self._timer = self._loop.call_later(self._interval_s, self._due)

    def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
