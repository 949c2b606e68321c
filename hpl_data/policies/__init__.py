"""Policies: what chooses the next action. One spec string selects one, for every CLI.

Two kinds share the spec namespace:

* **Chat policies** (LLMs) take chat messages and return completions with token log-probs and
  per-token entropy estimates. They run in the engine's event loop; env steps run elsewhere.
  ``vllm:MODEL_OR_PATH`` (in-process vLLM async engine), ``openai:URL[#model]`` (any
  OpenAI-compatible server; ``openai:URL1,URL2,...#model`` or ``openai:@FILE#model``, a file with
  one URL a line, balance several servers of one model), ``hf:MODEL_OR_PATH (transformers ``generate``).
* **Agents** (``oracle``, ``heuristic``, ``random`` or ``package.module:factory``) implement
  :class:`hpl_envs.agents.Agent` and run inside the env worker next to their env, because an
  oracle reads privileged env state. ``factory(env_name=..., seed=...)`` must return an Agent.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

BUILTIN_AGENTS = ("oracle", "heuristic", "random")
CHAT_BACKENDS = ("vllm", "openai", "hf")


class PolicyError(RuntimeError):
    """The policy could not produce a completion (after its retries)."""


class PolicyArgumentError(ValueError):
    """Options a chat backend does not take (a user's ``--policy-arg``): a bad configuration,
    caught before the backend is built, unlike a ``TypeError`` from inside it (a bug)."""


class ContextLengthError(PolicyError):
    """The conversation no longer fits the model's context window; the episode ends there."""


class MalformedResponseError(PolicyError):
    """The server answered, but not with a usable completion (invalid JSON, wrong shape, text that
    is not valid Unicode). Retried like a 5xx; after the last retry the episode fails with it."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 5  # alternatives per token, for the entropy estimate (0: sampled token only)
    logprobs: bool = True  # False: the text only (MC rollouts need no log-probs; the server does less)

    def replace(self, **kw: Any) -> SamplingParams:
        return SamplingParams(**{**self.__dict__, **kw})


@dataclass
class Completion:
    text: str
    token_logprobs: list[float] = field(default_factory=list)  # log-prob of each sampled token
    token_entropies: list[float] = field(default_factory=list)  # per-token entropy (estimate, nats)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))

    @property
    def mean_entropy(self) -> float:
        return float(sum(self.token_entropies) / len(self.token_entropies)) if self.token_entropies else 0.0


@runtime_checkable
class ChatPolicy(Protocol):
    name: str

    async def chat(self, messages: list[dict], params: SamplingParams,
                   affinity: str | None = None) -> list[Completion]:
        """``affinity``: calls with the same key share a prompt prefix (one episode, one MC task's
        rollouts); a multi-endpoint policy keeps them on one server for its prefix cache."""
        ...

    async def close(self) -> None: ...


def topk_entropy(logprobs: list[float]) -> float:
    """Entropy (nats) of a next-token distribution known only by its top-k log-probs.

    The missing probability mass is counted as a single outcome, so this is a lower bound of
    the true entropy, exact when the top-k hold all the mass. Servers return only top-k, so the
    uncertainty segmenter works with this estimate for every backend except ``hf:``.
    """
    ps = [math.exp(lp) for lp in logprobs if lp > -math.inf]
    h = -sum(p * math.log(p) for p in ps if p > 0)
    rest = 1.0 - sum(ps)
    if rest > 1e-12:
        h -= rest * math.log(rest)
    return h


@dataclass(frozen=True)
class PolicySpec:
    kind: str  # "vllm" | "openai" | "hf" | "agent"
    target: str  # model path / URL(s) / @endpoints file / agent name / "module:factory"
    model: str | None = None  # openai: model name after '#'

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

    def endpoints(self) -> list[str]:
        """The URLs of an ``openai:`` spec: ``URL``, ``URL1,URL2,...`` or ``@FILE`` (one URL a
        line; blank lines and lines starting with '#' are skipped). Reads the file now, so the
        list is the one of the machine that runs the policy."""
        if self.kind != "openai":
            raise ValueError(f"{self} names no OpenAI endpoints")
        if not self.target.startswith("@"):
            return [u.strip() for u in self.target.split(",")]
        path = Path(self.target[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"openai:@{path}: cannot read the endpoints file ({type(e).__name__}: {e})") from e
        urls = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not urls:
            raise ValueError(f"openai:@{path}: the endpoints file lists no URL (one URL a line)")
        if bad := [u for u in urls if any(c.isspace() for c in u) or "," in u]:
            raise ValueError(f"openai:@{path}: not a URL: {bad[0]!r} (one URL a line)")
        return urls

    def __str__(self) -> str:
        if self.is_agent:
            return self.target
        return f"{self.kind}:{self.target}" + (f"#{self.model}" if self.model else "")


def parse_spec(spec: str) -> PolicySpec:
    """``vllm:PATH``, ``openai:URL[,URL...][#model]``, ``openai:@FILE[#model]``, ``hf:PATH``, ``oracle|heuristic|random``,
    ``file:PATH`` (recorded expert trajectories, see :mod:`hpl_data.experts`) or
    ``package.module:factory``."""
    spec = (spec or "").strip()
    if not spec:
        raise ValueError("empty policy spec; use e.g. heuristic, vllm:/models/qwen, openai:http://127.0.0.1:8000/v1")
    if spec in BUILTIN_AGENTS:
        return PolicySpec("agent", spec)
    if spec.startswith("file:") and len(spec) > 5:
        return PolicySpec("agent", spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in CHAT_BACKENDS:
        if not rest:
            raise ValueError(f"policy spec {spec!r}: nothing after '{kind}:'")
        if kind == "openai":
            url, _, model = rest.partition("#")
            if url.startswith("@") and len(url) < 2:
                raise ValueError(f"policy spec {spec!r}: name the endpoints file after '@' (openai:@FILE#model)")
            if not url.startswith("@") and any(not u.strip() for u in url.split(",")):
                raise ValueError(f"policy spec {spec!r}: an empty URL in the endpoint list; "
                                 "use openai:URL1,URL2,...#model")
            return PolicySpec("openai", url, model or None)
        return PolicySpec(kind, rest)
    if sep and rest.isidentifier() and all(p.isidentifier() for p in kind.split(".")):
        return PolicySpec("agent", spec)
    raise ValueError(f"unknown policy spec {spec!r}; use one of {', '.join(BUILTIN_AGENTS)}, vllm:MODEL, "
                     "openai:URL[,URL...][#model], openai:@FILE[#model], hf:MODEL or package.module:factory")


def check_model_available(spec: PolicySpec) -> None:
    """``vllm:``/``hf:`` take a local model folder or a hub id (``org/name``); something that can
    only be a path (absolute, ``./``, ``~``, or more than one '/') must exist, so that a typo fails
    in one line before any work instead of deep inside the model loader. CLIs call this up front
    (``parse_spec`` only parses: a spec may name a folder of another machine). An ``openai:@FILE``
    endpoints file must exist and list at least one URL."""
    kind, target = spec.kind, spec.target
    if kind == "openai" and target.startswith("@"):
        spec.endpoints()
        return
    if kind not in ("vllm", "hf") or Path(target).expanduser().exists():
        return
    looks_like_path = target.startswith(("/", ".", "~")) or target.count("/") > 1 or "\\" in target
    if looks_like_path:
        raise ValueError(f"{kind}:{target}: no such model folder; give a local model folder or a hub id like "
                         "Qwen/Qwen2.5-7B-Instruct")


def make_agent_from_spec(env_name: str, spec: str | PolicySpec, seed: int = 0) -> Any:
    """An Agent for an agent spec (built-in name or ``module:factory``)."""
    from hpl_envs.agents import Agent, make_agent

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if not spec.is_agent:
        raise ValueError(f"{spec} is a chat policy, not an agent")
    if spec.target in BUILTIN_AGENTS:
        return make_agent(env_name, spec.target, seed=seed)
    if spec.target.startswith("file:"):
        from hpl_data.experts import FileExpert

        return FileExpert(spec.target[5:], env_name, seed)
    module_name, _, attr = spec.target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"agent spec {spec.target!r}: cannot import {attr} from {module_name} ({e})") from e
    agent = factory(env_name=env_name, seed=seed)
    if not isinstance(agent, Agent):
        raise ValueError(f"agent spec {spec.target!r}: the factory returned {type(agent).__name__}, which has no "
                         "reset(env, observation, info) / act(observation, info)")
    return agent


def _backend(spec: PolicySpec) -> tuple[Callable[..., ChatPolicy], Callable[..., Any], tuple, dict[str, Any]]:
    """How a chat spec is built: (factory, the callable whose keyword arguments are its options, the
    arguments the spec itself gives the factory)."""
    if spec.kind == "openai":
        from hpl_data.policies.openai_backend import OpenAIOptions, OpenAIPolicy

        def openai_policy(endpoints: list[str], *, model: str | None = None, **options: Any) -> ChatPolicy:
            return OpenAIPolicy(endpoints, model=model, options=OpenAIOptions(**options))

        return openai_policy, OpenAIOptions, (spec.endpoints(),), {"model": spec.model}
    if spec.kind == "vllm":
        from hpl_data.policies.vllm_backend import VLLMPolicy

        return VLLMPolicy, VLLMPolicy, (spec.target,), {}
    if spec.kind == "hf":
        from hpl_data.policies.hf_backend import HFPolicy

        return HFPolicy, HFPolicy, (spec.target,), {}
    raise ValueError(f"{spec} is an agent, not a chat policy")


def check_policy_options(spec: str | PolicySpec, options: dict[str, Any]) -> None:
    """:class:`PolicyArgumentError` for an option the spec's backend does not take (checked before
    any work, without building the backend); nothing for an agent spec."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec.is_agent:
        return
    factory, takes_options, args, given = _backend(spec)
    signature = inspect.signature(takes_options)
    try:
        if takes_options is factory:
            signature.bind(*args, **given, **options)
        else:  # a separate options object (openai:) takes only the options
            signature.bind(**options)
    except TypeError as e:
        kinds = (inspect.Parameter.KEYWORD_ONLY,) if takes_options is factory else (
            inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        taken = [n for n, p in signature.parameters.items() if p.kind in kinds]
        raise PolicyArgumentError(f"{spec.kind} policy: {e}; its options: {', '.join(taken)}") from None


def make_chat_policy(spec: str | PolicySpec, **options: Any) -> ChatPolicy:
    """A chat policy for a ``vllm:``/``openai:``/``hf:`` spec; ``options`` go to the backend
    (:class:`PolicyArgumentError` for one it does not take)."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    check_policy_options(spec, options)
    factory, _, args, given = _backend(spec)
    return factory(*args, **given, **options)
