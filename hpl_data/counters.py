"""The engine's counters: everything a run costs (calls, tokens, steps, restarts, time), for its
metadata. Their own module because the worker pools count restarts and the engine the rest."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Counters:
    """Everything that costs, for the run's metadata."""

    episodes: int = 0
    failed_episodes: int = 0
    llm_calls: int = 0
    llm_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    env_steps: int = 0
    resets: int = 0
    restores: int = 0
    replays: int = 0
    worker_restarts: int = 0
    episode_restarts: int = 0
    wall_s: float = 0.0
    llm_busy_s: float = 0.0  # wall time with at least one LLM request in flight
    peak_inflight: int = 0  # most LLM requests in flight at once
    inflight_request_s: float = 0.0  # integral of requests in flight over time (/ wall_s = mean in flight)
    _inflight: int = field(default=0, repr=False)
    _busy_since: float = field(default=0.0, repr=False)
    _changed_at: float = field(default=0.0, repr=False)

    def _account(self) -> None:
        now = time.perf_counter()
        self.inflight_request_s += self._inflight * (now - self._changed_at) if self._inflight else 0.0
        self._changed_at = now

    def llm_started(self) -> None:
        self._account()
        if self._inflight == 0:
            self._busy_since = time.perf_counter()
        self._inflight += 1
        self.peak_inflight = max(self.peak_inflight, self._inflight)

    def llm_finished(self) -> None:
        self._account()
        self._inflight -= 1
        if self._inflight == 0:
            self.llm_busy_s += time.perf_counter() - self._busy_since

    @property
    def inflight(self) -> int:
        """LLM requests in flight now."""
        return self._inflight

    def track_endpoints(self, stats: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Report a multi-endpoint policy's per-endpoint counters (calls, errors, ejections,
        recoveries) as ``llm_endpoints``: what changed since now, as the policy may serve
        several engines."""
        self._endpoint_stats, self._endpoint_base = stats, stats()

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        stats = getattr(self, "_endpoint_stats", None)
        if stats is not None:
            base = self._endpoint_base
            d["llm_endpoints"] = {url: {k: v - base.get(url, {}).get(k, 0) for k, v in s.items()}
                                  for url, s in stats().items()}
        d["outside_llm_fraction"] = (1 - self.llm_busy_s / self.wall_s) if self.wall_s > 0 and self.llm_calls else None
        d["mean_inflight"] = self.inflight_request_s / self.wall_s if self.wall_s > 0 else None
        return d
