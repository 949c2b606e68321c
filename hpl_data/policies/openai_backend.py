"""``openai:URL[#model]`` — any OpenAI-compatible chat server (vLLM serve, SGLang, OpenAI).

Concurrency is capped by a semaphore so hundreds of in-flight episodes do not open hundreds of
sockets; each request has a timeout; 429, 5xx, timeouts and connection errors are retried with
exponential backoff and jitter. Other 4xx errors are not retried (a retry cannot fix them).
"""

from __future__ import annotations

import asyncio
import os
import random
from urllib.parse import urlparse

from hpl_data.policies import Completion, ContextLengthError, PolicyError, SamplingParams, topk_entropy

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
                 request_timeout: float = 120.0, max_retries: int = 5, backoff_s: float = 0.5,
                 backoff_max_s: float = 20.0, logprobs: bool = True) -> None:
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
        self.logprobs = logprobs
        self.retries = 0  # requests retried (counter for the run's metadata)
        self._model_lock = asyncio.Lock()

    async def _model_name(self) -> str:
        async with self._model_lock:
            if self.model is None:
                models = await self._with_retries(lambda: self.client.models.list())
                ids = [m.id for m in models.data]
                if not ids:
                    raise PolicyError(f"{self.url}: the server lists no models; name one with openai:URL#model")
                self.model = ids[0]
        return self.model

    async def _with_retries(self, make_call):
        o = self._openai
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            try:
                return await make_call()
            except o.BadRequestError as e:
                text = str(e).lower()
                if any(h in text for h in _CONTEXT_HINTS):
                    raise ContextLengthError(f"{self.url}: {e}") from e
                raise PolicyError(f"{self.url}: request rejected ({e})") from e
            except (o.RateLimitError, o.InternalServerError, o.APITimeoutError, o.APIConnectionError) as e:
                if attempt == self.max_retries:
                    raise PolicyError(f"{self.url}: {type(e).__name__} after {attempt + 1} attempts: {e}") from e
                self.retries += 1
                await asyncio.sleep(min(self.backoff_max_s, delay) * (0.5 + random.random()))
                delay *= 2
            except o.APIStatusError as e:
                if e.status_code >= 500 and attempt < self.max_retries:
                    self.retries += 1
                    await asyncio.sleep(min(self.backoff_max_s, delay) * (0.5 + random.random()))
                    delay *= 2
                    continue
                raise PolicyError(f"{self.url}: HTTP {e.status_code}: {e}") from e
        raise AssertionError("unreachable")

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
            resp = await self._with_retries(lambda: self.client.chat.completions.create(**kwargs))
        usage = getattr(resp, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        out = []
        for choice in resp.choices or []:
            lps, ents = [], []
            content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
            for tok in content or []:
                lps.append(float(tok.logprob))
                tops = [float(t.logprob) for t in (tok.top_logprobs or [])]
                if tops:
                    ents.append(topk_entropy(tops))
            text = choice.message.content or ""
            out.append(Completion(text=text, token_logprobs=lps, token_entropies=ents, prompt_tokens=prompt_tokens,
                                  completion_tokens=len(lps), finish_reason=choice.finish_reason or ""))
        if not out:
            raise PolicyError(f"{self.url}: response has no choices")
        total = int(getattr(usage, "completion_tokens", 0) or 0)
        if total and not any(c.completion_tokens for c in out):
            for c in out:
                c.completion_tokens = total // len(out)
        return out

    async def close(self) -> None:
        await self.client.close()
