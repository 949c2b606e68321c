"""Which of several servers of one model takes the next request: balancing, ejection, affinity.

Pure bookkeeping, no I/O and no SDK: a client (:class:`~hpl_data.policies.openai_backend.OpenAIPolicy`)
asks :meth:`EndpointPool.pick` for an endpoint, brackets the request with :meth:`EndpointPool.sending`
and reports the outcome (:meth:`EndpointPool.answered`, :meth:`EndpointPool.failed`). Kept apart from
the client so that the rules can be tested with a fake clock and no server.

* Balancing: the healthy endpoint with the fewest requests outstanding (ties: fewest sent).
* Ejection (passive health checking): ``EjectionPolicy.after`` consecutive failures eject an
  endpoint for a backoff that doubles per ejection up to ``max_s``; once due it gets one probe
  request and is back if that succeeds. A dead server costs no polling; a revived one rejoins.
* Affinity: calls with the same key (one episode, one MC task's rollouts) stay on one endpoint
  while it is healthy, so that the server's prefix cache holds their shared prompt.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

AFFINITY_MEMORY = 65536  # affinity keys remembered (least recently used forgotten first)


@dataclass(frozen=True)
class EjectionPolicy:
    """When a failing endpoint is taken out and for how long."""

    after: int = 3  # consecutive retryable failures that eject an endpoint
    first_s: float = 5.0  # the first ejection's length; doubled on each further one
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.after < 1 or not 0 < self.first_s <= self.max_s:
            raise ValueError("openai: eject_after must be >= 1 and 0 < eject_s <= eject_max_s")


@dataclass(eq=False)
class Endpoint:
    """One server of the pool, with its health and its counters."""

    url: str
    outstanding: int = 0  # requests in flight now
    consecutive_errors: int = 0
    ejected_until: float | None = None  # clock time of the next probe; None: healthy
    eject_s: float = 0.0  # the current ejection backoff
    calls: int = 0  # requests sent
    errors: int = 0  # retryable failures (connection, 5xx, 429, timeout, malformed answer)
    ejections: int = 0
    recoveries: int = 0  # came back after an ejection

    @property
    def healthy(self) -> bool:
        return self.ejected_until is None

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "errors": self.errors, "ejections": self.ejections,
                "recoveries": self.recoveries}


class EndpointPool:
    """The endpoints of one policy and the rules that choose among them (see the module doc).
    ``clock`` is injectable so that ejection backoffs can be tested without sleeping."""

    def __init__(self, urls: Sequence[str], ejection: EjectionPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic, affinity_memory: int = AFFINITY_MEMORY) -> None:
        if not urls:
            raise ValueError("openai: no endpoint URL given")
        if len(set(urls)) != len(urls):
            raise ValueError(f"openai: an endpoint is listed twice in {list(urls)}")
        self.endpoints = [Endpoint(u) for u in urls]
        self.ejection = ejection or EjectionPolicy()
        self._clock = clock
        self._affinity: OrderedDict[str, Endpoint] = OrderedDict()
        self._affinity_memory = affinity_memory

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per endpoint: requests sent, retryable errors, ejections, recoveries (run metadata)."""
        return {e.url: e.stats() for e in self.endpoints}

    # ---------------------------------------------------------------- choice
    def pick(self, affinity: str | None = None, tried: set[Endpoint] | frozenset = frozenset()) -> Endpoint:
        """The endpoint for the next attempt of a call that already failed on ``tried``: the
        affinity key's while healthy, else a due probe, else the healthy one with the fewest
        requests outstanding; when every endpoint is ejected or tried, the one due first."""
        healthy = [e for e in self.endpoints if e.healthy and e not in tried]
        if affinity is not None:
            sticky = self._affinity.get(affinity)
            if sticky is not None and sticky in healthy:
                self._affinity.move_to_end(affinity)
                return sticky
        choice = self._probe_due(tried) or self._least_loaded(healthy) or self._due_first(tried)
        if affinity is not None and choice.healthy:
            self._remember(affinity, choice)
        return choice

    def _probe_due(self, tried: set[Endpoint] | frozenset) -> Endpoint | None:
        """An ejected endpoint whose backoff is over and that has no probe in flight (one at a time)."""
        now = self._clock()
        return next((e for e in self.endpoints if not e.healthy and e.ejected_until <= now
                     and e.outstanding == 0 and e not in tried), None)

    @staticmethod
    def _least_loaded(healthy: list[Endpoint]) -> Endpoint | None:
        return min(healthy, key=lambda e: (e.outstanding, e.calls)) if healthy else None

    def _due_first(self, tried: set[Endpoint] | frozenset) -> Endpoint:
        rest = [e for e in self.endpoints if e not in tried] or self.endpoints
        return min(rest, key=lambda e: (e.ejected_until or 0.0, e.outstanding))

    def _remember(self, affinity: str, endpoint: Endpoint) -> None:
        self._affinity[affinity] = endpoint
        self._affinity.move_to_end(affinity)
        if len(self._affinity) > self._affinity_memory:
            self._affinity.popitem(last=False)

    def fail_over(self, failed: Endpoint, tried: set[Endpoint]) -> bool:
        """After ``failed`` failed a call's attempt: True to retry at once on a healthy endpoint the
        call has not tried; False (and ``tried`` emptied) when the call should back off first."""
        tried.add(failed)
        if any(e not in tried and e.healthy for e in self.endpoints):
            return True
        tried.clear()
        return False

    # ---------------------------------------------------------------- outcomes
    @contextmanager
    def sending(self, endpoint: Endpoint) -> Iterator[Endpoint]:
        """Counts one request to ``endpoint`` as sent and outstanding while inside."""
        endpoint.outstanding += 1
        endpoint.calls += 1
        try:
            yield endpoint
        finally:
            endpoint.outstanding -= 1

    def answered(self, endpoint: Endpoint) -> None:
        """The server answered (a rejected request counts: the server is fine): healthy again."""
        endpoint.consecutive_errors = 0
        if not endpoint.healthy:
            endpoint.ejected_until, endpoint.eject_s = None, 0.0
            endpoint.recoveries += 1

    def failed(self, endpoint: Endpoint) -> None:
        """A retryable failure; the ``after``-th in a row ejects the endpoint (again, if a probe failed)."""
        endpoint.errors += 1
        endpoint.consecutive_errors += 1
        now = self._clock()
        if endpoint.consecutive_errors >= self.ejection.after and (endpoint.healthy or endpoint.ejected_until <= now):
            endpoint.eject_s = min(self.ejection.max_s, endpoint.eject_s * 2 if endpoint.eject_s else self.ejection.first_s)
            endpoint.ejected_until = now + endpoint.eject_s
            endpoint.ejections += 1
