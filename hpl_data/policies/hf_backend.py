"""``hf:MODEL_OR_PATH`` — transformers ``generate``, for small models and debugging.

Requests that arrive together with the same sampling parameters are generated as one padded
batch in a worker thread (the event loop keeps running). Log-probs and entropies are exact:
they come from the full next-token distribution (raw logits, before temperature / top-p).
"""

from __future__ import annotations

import asyncio
from typing import Any

from hpl_data.policies import Completion, ContextLengthError, PolicyError, SamplingParams


class HFPolicy:
    def __init__(self, model: str, *, device: str | None = None, dtype: str = "auto", max_batch: int = 16,
                 max_model_len: int | None = None) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise PolicyError("hf: policy needs torch and transformers: pip install 'hpl[train]'") from e
        self.torch = torch
        self.name = f"hf:{model}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.max_model_len = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 4096))
        self.max_batch = max_batch
        self._queue: list[tuple[list[int], SamplingParams, asyncio.Future]] = []
        self._runner: asyncio.Task | None = None

    async def chat(self, messages: list[dict], params: SamplingParams, affinity: str | None = None) -> list[Completion]:
        ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
        if len(ids) + 1 > self.max_model_len:
            raise ContextLengthError(f"{self.name}: prompt of {len(ids)} tokens exceeds {self.max_model_len}")
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((ids, params, fut))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            params = self._queue[0][1]
            batch = [r for r in self._queue if r[1] == params][: self.max_batch]
            for r in batch:
                self._queue.remove(r)
            try:
                results = await asyncio.to_thread(self._generate, [r[0] for r in batch], params)
                for (_, _, fut), res in zip(batch, results):
                    if not fut.done():
                        fut.set_result(res)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(PolicyError(f"{self.name}: {type(e).__name__}: {e}"))

    def _generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        torch = self.torch
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        gen: dict[str, Any] = dict(max_new_tokens=min(params.max_tokens, self.max_model_len - width),
                                   num_return_sequences=params.n, return_dict_in_generate=True, output_logits=True,
                                   pad_token_id=pad)
        if params.temperature > 0:
            gen.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            gen.update(do_sample=False)
        if params.stop:
            gen.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **gen)
        new = out.sequences[:, width:]
        logp = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B*n, T, V]
        chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        eos = {self.tokenizer.eos_token_id, pad}
        results: list[list[Completion]] = []
        for i, prompt in enumerate(prompts):
            comps = []
            for j in range(params.n):
                row = i * params.n + j
                toks = new[row].tolist()
                length = next((k + 1 for k, t in enumerate(toks) if t in eos), len(toks))
                finish = "stop" if length < len(toks) or (toks and toks[length - 1] in eos) else "length"
                text = self.tokenizer.decode(toks[:length], skip_special_tokens=True)
                comps.append(Completion(text=text, token_logprobs=chosen[row, :length].tolist(),
                                        token_entropies=entropy[row, :length].tolist(), prompt_tokens=len(prompt),
                                        completion_tokens=length, finish_reason=finish))
            results.append(comps)
        return results

    async def close(self) -> None:
        return None
