"""A chat policy as a synchronous Agent, for Monte-Carlo rollouts inside env worker processes.

The MC labeller steps an env in-process with an Agent; with an LLM reference policy each worker
process holds an ``LLMAgent`` that sends its requests to the policy (an OpenAI-compatible server, or a
small ``hf:`` model per process). Rollouts start mid-episode, so the labeller hands the agent the
conversation so far (``set_history``): the model sees the same context it would have seen had it
played the whole episode. Parallelism comes from the worker processes (``--workers``), each with one
request in flight; ``vllm:`` specs are refused here (one engine per worker would not fit a GPU):
serve the model with vLLM's OpenAI server and pass ``openai:URL``.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

from hpl_data.policies import ChatPolicy, PolicySpec, SamplingParams, make_chat_policy, parse_spec

_POLICIES: dict[str, tuple[ChatPolicy, asyncio.AbstractEventLoop]] = {}  # one client/model per process


def _policy(spec: str) -> tuple[ChatPolicy, asyncio.AbstractEventLoop]:
    if spec not in _POLICIES:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _POLICIES[spec] = (make_chat_policy(spec), loop)
    return _POLICIES[spec]


def check_rollout_policy(spec: str) -> PolicySpec:
    s = parse_spec(spec)
    if s.kind == "vllm":
        raise ValueError("an in-process vllm: policy cannot run inside every MC worker; serve it with "
                         "`python -m vllm.entrypoints.openai.api_server --model M` and use openai:URL")
    return s


class LLMAgent:
    def __init__(self, spec: str, env_name: str, seed: int = 0, temperature: float = 1.0, max_tokens: int = 256,
                 prompts: str = "default") -> None:
        self.spec, self.env_name, self.seed = spec, env_name, seed
        self.name = spec
        self.params = SamplingParams(temperature=temperature, max_tokens=max_tokens)
        self.prompts = prompts
        self.messages: list[dict] = []
        self._history: list[dict] | None = None
        self.last_thought = ""
        self.last_output = ""

    def set_history(self, messages: list[dict]) -> None:
        """The conversation up to the current observation (ends with its user turn)."""
        self._history = list(messages)

    def reset(self, env: Any, observation: str, info: dict) -> None:
        from hpl_envs.prompts import initial_messages

        self.messages = list(self._history) if self._history else initial_messages(self.env_name, observation,
                                                                                    self.prompts)
        self._history = None
        self.turn = 0

    def act(self, observation: str, info: dict) -> str:
        from hpl_envs.react import format_observation, parse_react

        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.append({"role": "user", "content": format_observation(observation, self.env_name)})
        policy, loop = _policy(self.spec)
        seed = zlib.crc32(f"{self.seed}:{self.turn}".encode()) & 0x7FFFFFFF
        comp = loop.run_until_complete(policy.chat(self.messages, self.params.replace(seed=seed)))[0]
        self.turn += 1
        self.messages.append({"role": "assistant", "content": comp.text})
        turn = parse_react(comp.text, multiline=self.env_name == "intercode-sql")
        self.last_thought, self.last_output = turn.thought, comp.text
        return turn.action


def make_rollout_agent(env_name: str, spec: str, seed: int = 0, **llm_options: Any):
    """An Agent for MC rollouts: a built-in/user/file agent, or an LLMAgent for a chat policy spec."""
    from hpl_data.policies import make_agent_from_spec

    s = parse_spec(spec)
    if s.is_agent:
        return make_agent_from_spec(env_name, s, seed=seed)
    check_rollout_policy(spec)
    return LLMAgent(spec, env_name, seed=seed, **llm_options)


def history_after(agent: Any, observation: str, env_name: str) -> list[dict] | None:
    """The agent's conversation plus the observation it now faces (None for non-LLM agents)."""
    from hpl_envs.react import format_observation

    msgs = getattr(agent, "messages", None)
    if not msgs:
        return None
    return [*msgs, {"role": "user", "content": format_observation(observation, env_name)}]
