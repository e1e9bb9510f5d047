"""Replica sets: least-outstanding-requests balancing, ejection of replicas that stop answering,
and active health checks that bring them back."""

from __future__ import annotations

import asyncio
import logging

from modelfleet.gateway.client import UpstreamPool, fetch
from modelfleet.metrics import GatewayMetrics
from modelfleet.plan import Endpoint
from modelfleet.settings import GatewaySettings

log = logging.getLogger("modelfleet.gateway")


class Replica:
    """One worker process of a service, as the gateway sees it."""

    def __init__(self, service: str, index: int, endpoint: Endpoint, settings: GatewaySettings) -> None:
        self.service = service
        self.index = index
        self.endpoint = endpoint
        self.name = f"{service}-{index}"
        self.pool = UpstreamPool(
            endpoint.host, endpoint.port, settings.max_connections_per_replica, settings.connect_timeout_s
        )
        self.outstanding = 0
        # In rotation from the start, so requests are balanced even before the first probe...
        self.healthy = True
        # ...but the gateway calls itself ready only once a health probe has passed.
        self.probed_ready = False
        self.failures = 0

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "url": self.endpoint.url,
            "healthy": self.healthy,
            "probed_ready": self.probed_ready,
            "outstanding": self.outstanding,
            "open_connections": self.pool.open_connections,
        }


class ReplicaSet:
    """The replicas of one service and the choice of which one takes the next request."""

    def __init__(
        self, service: str, endpoints: list[Endpoint], settings: GatewaySettings, metrics: GatewayMetrics
    ) -> None:
        self.service = service
        self.replicas = [Replica(service, i, ep, settings) for i, ep in enumerate(endpoints)]
        self._failures_to_eject = settings.failures_to_eject
        self._metrics = metrics
        self._turn = 0
        for replica in self.replicas:
            metrics.replica_healthy.get(service, replica.name).set(1)  # type: ignore[attr-defined]

    def pick(self, tried: set[int]) -> Replica | None:
        """The healthy untried replica with fewest requests in flight (ties rotate).

        When no healthy replica is left untried, an unhealthy one is tried rather than failing
        outright: health state may lag behind a replica that has just come back.
        """
        best: Replica | None = None
        fallback: Replica | None = None
        count = len(self.replicas)
        self._turn = (self._turn + 1) % count
        for offset in range(count):
            replica = self.replicas[(self._turn + offset) % count]
            if replica.index in tried:
                continue
            if replica.healthy:
                if best is None or replica.outstanding < best.outstanding:
                    best = replica
            elif fallback is None:
                fallback = replica
        return best or fallback

    def ready(self) -> bool:
        """Whether a replica has passed a health probe and is in rotation now."""
        return any(r.healthy and r.probed_ready for r in self.replicas)

    def probed(self) -> bool:
        """Whether any replica has passed a health probe yet."""
        return any(r.probed_ready for r in self.replicas)

    def report_success(self, replica: Replica) -> None:
        if replica.failures:
            replica.failures = 0
        if not replica.healthy:
            self._set_health(replica, True, "answered a request")

    def report_failure(self, replica: Replica, reason: str, fatal: bool) -> None:
        """Count a failed attempt; a refused connection ejects at once, other failures after a run of them."""
        self._metrics.upstream_failures.get(self.service, replica.name).inc()  # type: ignore[attr-defined]
        replica.failures += 1
        if replica.healthy and (fatal or replica.failures >= self._failures_to_eject):
            self._set_health(replica, False, reason)

    def _set_health(self, replica: Replica, healthy: bool, reason: str) -> None:
        replica.healthy = healthy
        if healthy:
            replica.failures = 0
        self._metrics.replica_healthy.get(self.service, replica.name).set(1 if healthy else 0)  # type: ignore[attr-defined]
        log.warning(
            "replica %s (%s) %s rotation: %s",
            replica.name,
            replica.endpoint.url,
            "back in" if healthy else "taken out of",
            reason,
        )

    async def probe(self, timeout_s: float) -> None:
        """Ask every replica whether it is ready, and update rotation accordingly."""
        await asyncio.gather(*(self._probe_one(r, timeout_s) for r in self.replicas))

    async def _probe_one(self, replica: Replica, timeout_s: float) -> None:
        try:
            status, _ = await fetch(
                replica.endpoint.host, replica.endpoint.port, "/v2/health/ready", timeout_s
            )
        except Exception as err:
            self.report_failure(replica, f"health probe failed: {err or type(err).__name__}", fatal=False)
            return
        if status == 200:
            replica.probed_ready = True
            if not replica.healthy:
                self._set_health(replica, True, "health probe passed")
            replica.failures = 0
        else:
            self.report_failure(replica, f"health probe answered {status}", fatal=True)

    def close(self) -> None:
        for replica in self.replicas:
            replica.pool.close()
