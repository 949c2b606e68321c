"""Chat-template tokenization with per-token masks: only assistant (action) tokens are trained.

Agent completions are multi-turn: assistant turns interleaved with environment observations
(user turns). Training on observation tokens teaches the model to predict the environment, which
is what TRL's DPOTrainer does with multi-turn completions. Here the conversation is rendered with
the model's own chat template one turn at a time:

* ``ids_k`` = template(messages[:k+1]); each ``ids_k`` must start with ``ids_{k-1}`` (the template
  renders earlier turns the same way whatever follows) - that is the alignment check;
* for an assistant turn, the tokens after template(messages[:k], add_generation_prompt=True) (the
  role header) are trainable: the reply and the template's end-of-turn token.

A conversation that fails a check (a template that rewrites earlier turns, e.g. one that strips
reasoning from past assistant turns; a tokenizer that merges across the turn boundary) raises
:class:`AlignmentError`; callers count and report it, never train on it with a wrong mask.
"""

from __future__ import annotations

from dataclasses import dataclass


class AlignmentError(ValueError):
    """The chat template's rendering of a conversation cannot be split into turns."""


@dataclass
class TokenizedConversation:
    ids: list[int]
    trainable: list[bool]  # per token: True for assistant reply tokens (after the role header)
    prompt_len: int  # tokens of the prompt messages (a prefix of ids)

    @property
    def n_trainable(self) -> int:
        return sum(self.trainable)


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=False)
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


def tokenize_conversation(tokenizer, prompt: list[dict], completion: list[dict]) -> TokenizedConversation:
    """Tokens of prompt + completion and the trainable mask over assistant turns of ``completion``.

    Assistant turns inside ``prompt`` (e.g. the expert prefix of a step pair) are context, not
    trained.
    """
    messages = list(prompt) + list(completion)
    if not completion:
        raise AlignmentError("empty completion")
    prev: list[int] = []
    trainable: list[bool] = []
    prompt_len = 0
    for k, msg in enumerate(messages):
        ids = _render(tokenizer, messages[: k + 1])
        if ids[: len(prev)] != prev:
            raise AlignmentError(f"turn {k} ({msg['role']}): the template renders earlier turns differently once "
                                 "this turn is added; cannot split the conversation into turns")
        if msg["role"] == "assistant" and k >= len(prompt):
            header = _render(tokenizer, messages[:k], generation_prompt=True)
            if ids[: len(header)] != header or len(header) < len(prev):
                raise AlignmentError(f"turn {k}: the assistant header is not a prefix of the rendered turn")
            trainable += [False] * (len(header) - len(prev)) + [True] * (len(ids) - len(header))
            if len(ids) == len(header):
                raise AlignmentError(f"turn {k}: assistant turn renders to no tokens")
        else:
            trainable += [False] * (len(ids) - len(prev))
        prev = ids
        if k == len(prompt) - 1:
            prompt_len = len(ids)
    return TokenizedConversation(prev, trainable, prompt_len)


def tokenize_pair(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict]):
    """Both sides of a preference pair; the prompt must tokenize identically in both."""
    c = tokenize_conversation(tokenizer, prompt, chosen)
    r = tokenize_conversation(tokenizer, prompt, rejected)
    if c.ids[: c.prompt_len] != r.ids[: r.prompt_len]:
        raise AlignmentError("prompt tokens differ between chosen and rejected")
    return c, r
