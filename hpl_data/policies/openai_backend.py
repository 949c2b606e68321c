"""``openai:URL[,URL...][#model]`` — one or several OpenAI-compatible chat servers (vLLM serve,
SGLang, OpenAI) serving the same model.

Concurrency is capped by a semaphore so hundreds of in-flight episodes do not open hundreds of
sockets; each request has a timeout and each call a deadline over all its attempts (a server that
accepts and never answers costs ``call_timeout_s``, not attempts x timeout); 429, 5xx, timeouts,
connection errors and malformed answers (invalid JSON, a wrong shape, text that is not valid
Unicode) are retried with exponential backoff and jitter. Other 4xx errors are not retried (a
retry cannot fix them). Whatever fails ends as a :class:`PolicyError`: the engine records it on
the episode and the run goes on.

With several endpoints, which one takes each attempt is :class:`~hpl_data.policies.endpoints.EndpointPool`'s
choice (fewest requests outstanding, ejection of a failing server and its probe, per-key affinity
for the prefix cache); a retryable failure is retried at once on another endpoint (backoff only
once every endpoint failed the call). This module does only the SDK calls and their retries.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
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
from hpl_data.policies.endpoints import EjectionPolicy, Endpoint, EndpointPool

T = TypeVar("T")

_CONTEXT_HINTS = ("maximum context length", "context length", "too long", "max_model_len", "context_length_exceeded")


def normalise_url(url: str) -> str:
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if parsed.path in ("", "/"):
        url = url.rstrip("/") + "/v1"
    return url


@dataclass(frozen=True)
class OpenAIOptions:
    """How an ``openai:`` policy talks to its servers; each field is a ``--policy-arg KEY=VALUE``."""

    api_key: str | None = None  # default: $OPENAI_API_KEY, else "EMPTY" (vLLM needs none)
    concurrency: int = 64  # requests in flight at most, over all endpoints
    request_timeout: float = 120.0  # one HTTP request
    call_timeout_s: float = 300.0  # one call, all its attempts together
    max_retries: int = 5
    backoff_s: float = 0.5  # the first backoff once every endpoint failed a call; doubled per round
    backoff_max_s: float = 20.0
    logprobs: bool = True  # False: never ask the server for log-probs
    eject_after: int = 3  # consecutive failures that eject an endpoint (see EndpointPool)
    eject_s: float = 5.0
    eject_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.call_timeout_s > 0:
            raise ValueError(f"openai: call_timeout_s must be > 0 seconds, got {self.call_timeout_s!r}")
        self.ejection()  # validates the ejection fields

    def ejection(self) -> EjectionPolicy:
        return EjectionPolicy(after=int(self.eject_after), first_s=float(self.eject_s), max_s=float(self.eject_max_s))


class OpenAIPolicy:
    """A chat policy on one or several OpenAI-compatible servers of one model: the SDK calls, their
    retries and the call deadline; the choice of server is the :class:`EndpointPool`'s."""

    def __init__(self, endpoints: str | list[str] | EndpointPool, model: str | None = None,
                 options: OpenAIOptions | None = None) -> None:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the install
            raise PolicyError("openai: policy needs the openai package: pip install 'hpl[vllm]' or pip install openai") from e
        self._openai = openai
        self.options = options = options or OpenAIOptions()
        if not isinstance(endpoints, EndpointPool):
            urls = [normalise_url(u.strip()) for u in ([endpoints] if isinstance(endpoints, str) else endpoints)
                    if u.strip()]
            endpoints = EndpointPool(urls, options.ejection())
        self.pool = endpoints
        key = options.api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        self._clients = {e: openai.AsyncOpenAI(base_url=e.url, api_key=key, timeout=options.request_timeout,
                                               max_retries=0) for e in self.pool.endpoints}
        self.url = ",".join(self.pool.urls)
        self.model = model
        self.name = f"openai:{self.url}" + (f"#{model}" if model else "")
        self.semaphore = asyncio.Semaphore(max(1, options.concurrency))
        self.retries = 0  # requests retried (counter for the run's metadata)
        self.malformed_responses = 0  # answers that were not a usable completion
        self._model_lock = asyncio.Lock()

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.pool.endpoints

    def endpoint_stats(self) -> dict[str, dict[str, int]]:
        """Per endpoint: requests sent, retryable errors, ejections, recoveries (run metadata)."""
        return self.pool.stats()

    async def _model_name(self) -> str:
        async with self._model_lock:
            if self.model is None:
                ids = await self._with_retries(lambda client: client.models.list(), _model_ids)
                if not ids:
                    raise PolicyError(f"{self.url}: the server lists no models; name one with openai:URL#model")
                self.model = ids[0]
        return self.model

    # ---------------------------------------------------------------- attempts
    async def _with_retries(self, make_call: Callable[[Any], Awaitable[Any]], parse: Callable[[Any], T],
                            affinity: str | None = None) -> T:
        """``parse(await make_call(client))``, retried; all attempts together end by ``call_timeout_s``."""
        attempts = [0]
        deadline_s = self.options.call_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                return await self._attempts(make_call, parse, attempts, affinity)
        except TimeoutError as e:
            raise PolicyError(f"{self.url}: no answer within the {deadline_s:g} s call deadline "
                              f"({attempts[0]} attempt(s)); raise it with --policy-arg call_timeout_s=SECONDS "
                              "if the server is just slow") from e

    async def _attempts(self, make_call: Callable[[Any], Awaitable[Any]], parse: Callable[[Any], T],
                        attempts: list[int], affinity: str | None) -> T:
        opts = self.options
        delay = opts.backoff_s
        tried: set[Endpoint] = set()
        for attempt in range(opts.max_retries + 1):
            attempts[0] = attempt + 1
            ep = self.pool.pick(affinity, tried)
            try:
                return await self._attempt(ep, make_call, parse, attempt + 1)
            except _RetryableFailure as failure:
                if attempt == opts.max_retries:
                    raise PolicyError(f"{ep.url}: {failure}") from failure.__cause__
            self.retries += 1
            if self.pool.fail_over(ep, tried):
                continue  # at once, on a healthy endpoint this call has not tried
            await asyncio.sleep(min(opts.backoff_max_s, delay) * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    async def _attempt(self, ep: Endpoint, make_call: Callable[[Any], Awaitable[Any]], parse: Callable[[Any], T],
                       number: int) -> T:
        """One request to ``ep``; the pool hears whether the server answered. What another attempt
        may fix (429, 5xx, timeouts, connection errors, malformed answers) raises _RetryableFailure;
        other refusals end the call."""
        o = self._openai
        with self.pool.sending(ep):
            try:
                result = await self._call_and_parse(self._clients[ep], make_call, parse)
            except o.BadRequestError as e:
                self.pool.answered(ep)  # the server is fine; the request is not
                if any(h in str(e).lower() for h in _CONTEXT_HINTS):
                    raise ContextLengthError(f"{ep.url}: {e}") from e
                raise PolicyError(f"{ep.url}: request rejected ({e})") from e
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError,
                    MalformedResponseError) as e:
                self.pool.failed(ep)
                raise _RetryableFailure(f"{type(e).__name__} after {number} attempts: {e}") from e
            except o.APIStatusError as e:
                if e.status_code < 500:
                    self.pool.answered(ep)
                    raise PolicyError(f"{ep.url}: HTTP {e.status_code} after {number} attempt(s): {e}") from e
                self.pool.failed(ep)
                raise _RetryableFailure(f"HTTP {e.status_code} after {number} attempt(s): {e}") from e
            self.pool.answered(ep)
            return result

    async def _call_and_parse(self, client: Any, make_call: Callable[[Any], Awaitable[Any]],
                              parse: Callable[[Any], T]) -> T:
        """The SDK call and its parse; an answer that is no usable result raises MalformedResponseError."""
        try:
            resp = await make_call(client)
        except (ValueError, self._openai.APIResponseValidationError) as e:  # json.JSONDecodeError is a ValueError
            raise self._malformed(e) from e
        try:
            return parse(resp)
        except (ValueError, TypeError, AttributeError) as e:
            # the SDK builds response objects without validating them (a JSON array stays a list),
            # so a wrong shape shows up as we read it; UnicodeError is a ValueError
            raise self._malformed(e) from e

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
        if self.options.logprobs and params.logprobs:
            kwargs["logprobs"] = True
            if params.top_logprobs:
                kwargs["top_logprobs"] = params.top_logprobs
        async with self.semaphore:
            return await self._with_retries(lambda client: client.chat.completions.create(**kwargs), _completions,
                                            affinity)

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self._clients.values()))


class _RetryableFailure(Exception):
    """An attempt failed in a way another attempt may fix; the message ends the call's error if none is left."""


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
