"""``openai:URL[#model]`` — any OpenAI-compatible chat server (vLLM serve, SGLang, OpenAI).

Concurrency is capped by a semaphore so hundreds of in-flight episodes do not open hundreds of
sockets; each request has a timeout and each call a deadline over all its attempts (a server that
accepts and never answers costs ``call_timeout_s``, not attempts x timeout); 429, 5xx, timeouts,
connection errors and malformed answers (invalid JSON, a wrong shape, text that is not valid
Unicode) are retried with exponential backoff and jitter. Other 4xx errors are not retried (a
retry cannot fix them). Whatever fails ends as a :class:`PolicyError`: the engine records it on
the episode and the run goes on.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Awaitable, Callable
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


class OpenAIPolicy:
    def __init__(self, url: str, model: str | None = None, *, api_key: str | None = None, concurrency: int = 64,
                 request_timeout: float = 120.0, call_timeout_s: float = 300.0, max_retries: int = 5,
                 backoff_s: float = 0.5, backoff_max_s: float = 20.0, logprobs: bool = True) -> None:
        try:
            import openai
        except ImportError as e:  # pragma: no cover - depends on the install
            raise PolicyError("openai: policy needs the openai package: pip install 'hpl[vllm]' or pip install openai") from e
        self._openai = openai
        self.url = normalise_url(url)
        self.model = model
        self.name = f"openai:{self.url}" + (f"#{model}" if model else "")
        self.client = openai.AsyncOpenAI(base_url=self.url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                         timeout=request_timeout, max_retries=0)
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        if not call_timeout_s > 0:
            raise ValueError(f"openai: call_timeout_s must be > 0 seconds, got {call_timeout_s!r}")
        self.call_timeout_s = float(call_timeout_s)
        self.logprobs = logprobs
        self.retries = 0  # requests retried (counter for the run's metadata)
        self.malformed_responses = 0  # answers that were not a usable completion
        self._model_lock = asyncio.Lock()

    async def _model_name(self) -> str:
        async with self._model_lock:
            if self.model is None:
                ids = await self._with_retries(lambda: self.client.models.list(), _model_ids)
                if not ids:
                    raise PolicyError(f"{self.url}: the server lists no models; name one with openai:URL#model")
                self.model = ids[0]
        return self.model

    async def _with_retries(self, make_call: Callable[[], Awaitable[Any]], parse: Callable[[Any], T]) -> T:
        """``parse(await make_call())``, retried; all attempts together end by ``call_timeout_s``."""
        attempts = [0]
        try:
            async with asyncio.timeout(self.call_timeout_s):
                return await self._attempts(make_call, parse, attempts)
        except TimeoutError as e:
            raise PolicyError(f"{self.url}: no answer within the {self.call_timeout_s:g} s call deadline "
                              f"({attempts[0]} attempt(s)); raise it with --policy-arg call_timeout_s=SECONDS "
                              "if the server is just slow") from e

    async def _attempts(self, make_call: Callable[[], Awaitable[Any]], parse: Callable[[Any], T],
                        attempts: list[int]) -> T:
        o = self._openai
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            attempts[0] = attempt + 1
            try:
                try:
                    resp = await make_call()
                except (ValueError, o.APIResponseValidationError) as e:  # json.JSONDecodeError is a ValueError
                    raise self._malformed(e) from e
                try:
                    return parse(resp)
                except (ValueError, TypeError, AttributeError) as e:
                    # the SDK builds response objects without validating them (a JSON array stays a
                    # list), so a wrong shape shows up as we read it; UnicodeError is a ValueError
                    raise self._malformed(e) from e
            except o.BadRequestError as e:
                text = str(e).lower()
                if any(h in text for h in _CONTEXT_HINTS):
                    raise ContextLengthError(f"{self.url}: {e}") from e
                raise PolicyError(f"{self.url}: request rejected ({e})") from e
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError,
                    MalformedResponseError) as e:
                if attempt == self.max_retries:
                    raise PolicyError(f"{self.url}: {type(e).__name__} after {attempt + 1} attempts: {e}") from e
            except o.APIStatusError as e:
                if e.status_code < 500 or attempt == self.max_retries:
                    raise PolicyError(f"{self.url}: HTTP {e.status_code} after {attempt + 1} attempt(s): {e}") from e
            self.retries += 1
            await asyncio.sleep(min(self.backoff_max_s, delay) * (0.5 + random.random()))
            delay *= 2
        raise AssertionError("unreachable")

    def _malformed(self, e: Exception) -> MalformedResponseError:
        self.malformed_responses += 1
        return MalformedResponseError(f"malformed response ({type(e).__name__}: {str(e)[:200]})")

    async def chat(self, messages: list[dict], params: SamplingParams) -> list[Completion]:
        model = await self._model_name()
        kwargs = dict(model=model, messages=messages, temperature=params.temperature, top_p=params.top_p,
                      max_tokens=params.max_tokens, n=params.n)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if self.logprobs:
            kwargs["logprobs"] = True
            if params.top_logprobs:
                kwargs["top_logprobs"] = params.top_logprobs
        async with self.semaphore:
            return await self._with_retries(lambda: self.client.chat.completions.create(**kwargs), _completions)

    async def close(self) -> None:
        await self.client.close()


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
        await self.client.close()
