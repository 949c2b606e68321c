"""``openai:URL[,URL...][#model]`` — one or several OpenAI-compatible chat servers (vLLM serve,
SGLang, OpenAI) serving the same model.

Concurrency is capped by a semaphore so hundreds of in-flight episodes do not open hundreds of
sockets; each request has a timeout and each call a deadline over all its attempts (a server that
accepts and never answers costs ``call_timeout_s``, not attempts x timeout); 429, 5xx, timeouts,
connection errors and malformed answers (invalid JSON, a wrong shape, text that is not valid
Unicode) are retried with exponential backoff and jitter. Other 4xx errors are not retried (a
retry cannot fix them). Whatever fails ends as a :class:`PolicyError`: the engine records it on
the episode and the run goes on.

With several endpoints each attempt goes to the endpoint with the fewest requests outstanding;
a retryable failure is retried at once on another endpoint (backoff only once every endpoint
failed the call). ``eject_after`` consecutive failures eject an endpoint; after a backoff
(doubling per ejection, up to ``eject_max_s``) it gets one probe request and comes back if that
succeeds (passive health checking: a dead server costs no polling, a revived one rejoins).
Calls with the same ``affinity`` key (the engine: one episode; MC: one task's rollouts) stay on
one endpoint while it is healthy, so the server's prefix cache holds their shared prompt.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlparse

from hpl_data.policies import (
    Completion,
    ContextLengthError,
    MalformedResponseError,
    PolicyError,
    SamplingParams,
    topk_entropy,
)

T = TypeVar("T")

_CONTEXT_HINTS = ("maximum context length", "context length", "too long", "max_model_len", "context_length_exceeded")


def normalise_url(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if parsed.path in ("", "/"):
        url = url.rstrip("/") + "/v1"
    return url


AFFINITY_MEMORY = 65536  # affinity keys remembered (least recently used forgotten first)


@dataclass(eq=False)
class Endpoint:
    """One server of a multi-endpoint policy, with its health and its counters."""

    url: str
    client: Any
    outstanding: int = 0  # requests in flight now
    consecutive_errors: int = 0
    ejected_until: float | None = None  # monotonic time of the next probe; None: healthy
    eject_s: float = 0.0  # the current ejection backoff
    calls: int = 0  # requests sent
    errors: int = 0  # retryable failures (connection, 5xx, 429, timeout, malformed answer)
    ejections: int = 0
    recoveries: int = 0  # came back after an ejection

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "errors": self.errors, "ejections": self.ejections,
                "recoveries": self.recoveries}


class OpenAIPolicy:
    def __init__(self, url: str | list[str], model: str | None = None, *, api_key: str | None = None,
                 concurrency: int = 64, request_timeout: float = 120.0, call_timeout_s: float = 300.0,
                 max_retries: int = 5, backoff_s: float = 0.5, backoff_max_s: float = 20.0, logprobs: bool = True,
                 eject_after: int = 3, eject_s: float = 5.0, eject_max_s: float = 60.0) -> None:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the install
            raise PolicyError("openai: policy needs the openai package: pip install 'hpl[vllm]' or pip install openai") from e
        self._openai = openai
        urls = [normalise_url(u.strip()) for u in ([url] if isinstance(url, str) else url) if u.strip()]
        if not urls:
            raise ValueError("openai: no endpoint URL given")
        if len(set(urls)) != len(urls):
            raise ValueError(f"openai: an endpoint is listed twice in {urls}")
        key = api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        self.endpoints = [Endpoint(u, openai.AsyncOpenAI(base_url=u, api_key=key, timeout=request_timeout,
                                                         max_retries=0)) for u in urls]
        self.url = ",".join(urls)
        self.model = model
        self.name = f"openai:{self.url}" + (f"#{model}" if model else "")
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        if not call_timeout_s > 0:
            raise ValueError(f"openai: call_timeout_s must be > 0 seconds, got {call_timeout_s!r}")
        if eject_after < 1 or not 0 < eject_s <= eject_max_s:
            raise ValueError("openai: eject_after must be >= 1 and 0 < eject_s <= eject_max_s")
        self.call_timeout_s = float(call_timeout_s)
        self.eject_after, self.eject_s, self.eject_max_s = int(eject_after), float(eject_s), float(eject_max_s)
        self.logprobs = logprobs
        self.retries = 0  # requests retried (counter for the run's metadata)
        self.malformed_responses = 0  # answers that were not a usable completion
        self._affinity: OrderedDict[str, Endpoint] = OrderedDict()
        self._model_lock = asyncio.Lock()

    def endpoint_stats(self) -> dict[str, dict[str, int]]:
        """Per endpoint: requests sent, retryable errors, ejections, recoveries (run metadata)."""
        return {e.url: e.stats() for e in self.endpoints}

    async def _model_name(self) -> str:
        async with self._model_lock:
            if self.model is None:
                ids = await self._with_retries(lambda client: client.models.list(), _model_ids)
                if not ids:
                    raise PolicyError(f"{self.url}: the server lists no models; name one with openai:URL#model")
                self.model = ids[0]
        return self.model

    # ---------------------------------------------------------------- endpoint choice and health
    def _pick(self, affinity: str | None, tried: set[Endpoint]) -> Endpoint:
        """The endpoint for the next attempt: the affinity key's while healthy, else a due probe,
        else the healthy one with the fewest requests outstanding; when every endpoint is
        ejected or failed this call, the one whose probe is due first."""
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.ejected_until is None and e not in tried]
        if affinity is not None:
            sticky = self._affinity.get(affinity)
            if sticky is not None and sticky in healthy:
                self._affinity.move_to_end(affinity)
                return sticky
        due = [e for e in self.endpoints if e.ejected_until is not None and e.ejected_until <= now
               and e.outstanding == 0 and e not in tried]
        if due:  # one probe at a time; it brings the endpoint back if it succeeds
            choice = due[0]
        elif healthy:
            choice = min(healthy, key=lambda e: (e.outstanding, e.calls))
        else:
            rest = [e for e in self.endpoints if e not in tried] or self.endpoints
            choice = min(rest, key=lambda e: (e.ejected_until or 0.0, e.outstanding))
        if affinity is not None and choice.ejected_until is None:
            self._affinity[affinity] = choice
            self._affinity.move_to_end(affinity)
            if len(self._affinity) > AFFINITY_MEMORY:
                self._affinity.popitem(last=False)
        return choice

    def _answered(self, ep: Endpoint) -> None:
        ep.consecutive_errors = 0
        if ep.ejected_until is not None:
            ep.ejected_until, ep.eject_s = None, 0.0
            ep.recoveries += 1

    def _failed(self, ep: Endpoint) -> None:
        ep.errors += 1
        ep.consecutive_errors += 1
        if ep.consecutive_errors >= self.eject_after and (ep.ejected_until is None
                                                          or ep.ejected_until <= time.monotonic()):
            ep.eject_s = min(self.eject_max_s, ep.eject_s * 2 if ep.eject_s else self.eject_s)
            ep.ejected_until = time.monotonic() + ep.eject_s
            ep.ejections += 1

    # ---------------------------------------------------------------- attempts
    async def _with_retries(self, make_call: Callable[[Any], Awaitable[Any]], parse: Callable[[Any], T],
                            affinity: str | None = None) -> T:
        """``parse(await make_call(client))``, retried; all attempts together end by ``call_timeout_s``."""
        attempts = [0]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await self._attempts(make_call, parse, attempts, affinity)
        except TimeoutError as e:
            raise PolicyError(f"{self.url}: no answer within the {self.call_timeout_s:g} s call deadline "
                              f"({attempts[0]} attempt(s)); raise it with --policy-arg call_timeout_s=SECONDS "
                              "if the server is just slow") from e

    async def _attempts(self, make_call: Callable[[Any], Awaitable[Any]], parse: Callable[[Any], T],
                        attempts: list[int], affinity: str | None) -> T:
        o = self._openai
        delay = self.backoff_s
        tried: set[Endpoint] = set()
        for attempt in range(self.max_retries + 1):
            attempts[0] = attempt + 1
            ep = self._pick(affinity, tried)
            ep.outstanding += 1
            ep.calls += 1
            try:
                try:
                    resp = await make_call(ep.client)
                except (ValueError, o.APIResponseValidationError) as e:  # json.JSONDecodeError is a ValueError
                    raise self._malformed(e) from e
                try:
                    result = parse(resp)
                except (ValueError, TypeError, AttributeError) as e:
                    # the SDK builds response objects without validating them (a JSON array stays a
                    # list), so a wrong shape shows up as we read it; UnicodeError is a ValueError
                    raise self._malformed(e) from e
                self._answered(ep)
                return result
            except o.BadRequestError as e:
                self._answered(ep)  # the server is fine; the request is not
                text = str(e).lower()
                if any(h in text for h in _CONTEXT_HINTS):
                    raise ContextLengthError(f"{ep.url}: {e}") from e
                raise PolicyError(f"{ep.url}: request rejected ({e})") from e
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError,
                    MalformedResponseError) as e:
                self._failed(ep)
                if attempt == self.max_retries:
                    raise PolicyError(f"{ep.url}: {type(e).__name__} after {attempt + 1} attempts: {e}") from e
            except o.APIStatusError as e:
                if e.status_code < 500:
                    self._answered(ep)
                    raise PolicyError(f"{ep.url}: HTTP {e.status_code} after {attempt + 1} attempt(s): {e}") from e
                self._failed(ep)
                if attempt == self.max_retries:
                    raise PolicyError(f"{ep.url}: HTTP {e.status_code} after {attempt + 1} attempt(s): {e}") from e
            finally:
                ep.outstanding -= 1
            self.retries += 1
            tried.add(ep)
            if any(e not in tried and e.ejected_until is None for e in self.endpoints):
                continue  # fail over to a healthy endpoint at once
            tried.clear()
            await asyncio.sleep(min(self.backoff_max_s, delay) * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    def _malformed(self, e: Exception) -> MalformedResponseError:
        self.malformed_responses += 1
        return MalformedResponseError(f"malformed response ({type(e).__name__}: {str(e)[:200]})")

    async def chat(self, messages: list[dict], params: SamplingParams, affinity: str | None = None) -> list[Completion]:
        model = await self._model_name()
        kwargs = dict(model=model, messages=messages, temperature=params.temperature, top_p=params.top_p,
                      max_tokens=params.max_tokens, n=params.n)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if self.logprobs and params.logprobs:
            kwargs["logprobs"] = True
            if params.top_logprobs:
                kwargs["top_logprobs"] = params.top_logprobs
        async with self.semaphore:
            return await self._with_retries(lambda client: client.chat.completions.create(**kwargs), _completions,
                                            affinity)

    async def close(self) -> None:
        await asyncio.gather(*(e.client.close() for e in self.endpoints))


def _model_ids(models: Any) -> list[str]:
    ids = [m.id for m in models.data]
    if not all(isinstance(i, str) for i in ids):
        raise TypeError(f"model ids are not strings: {ids[:3]!r}")
    return ids


def _text(value: Any, what: str) -> str:
    """A string the rest of the pipeline can store: JSON ``"\\ud800"`` decodes to a lone
    surrogate, which no UTF-8 writer (Parquet, JSON) accepts."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not a string")
    value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
    return value


def _completions(resp: Any) -> list[Completion]:
    """Completions from a chat response; TypeError/ValueError/AttributeError when it has the wrong shape."""
    choices = resp.choices
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"no choices (got {type(choices).__name__})")
    usage = getattr(resp, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    out = []
    for choice in choices:
        lps, ents = [], []
        content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
        for tok in content or []:
            lp = float(tok.logprob)
            if math.isnan(lp):
                raise ValueError("token log-prob is NaN")
            lps.append(lp)
            tops = [float(t.logprob) for t in (tok.top_logprobs or [])]
            if tops:
                ents.append(topk_entropy(tops))
        text = _text(choice.message.content, "message content")
        out.append(Completion(text=text, token_logprobs=lps, token_entropies=ents, prompt_tokens=prompt_tokens,
                              completion_tokens=len(lps), finish_reason=_text(choice.finish_reason, "finish_reason")))
    total = int(getattr(usage, "completion_tokens", 0) or 0)
    if total and not any(c.completion_tokens for c in out):
        for c in out:
            c.completion_tokens = total // len(out)
    return out
    async def close(self) -> None:
        await asyncio.gather(*(e.client.close() for e in self.endpoints))
