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


# ---------------------------------------------------------------------------------- over-length
# The rule for a sample longer than a row (``max_row_tokens``), applied before the whole sample is
# tokenised or any tensor of its size exists:
#
# * kept whole: the leading system message(s) and the first user message (the task), and every
#   completion (chosen, rejected: what the loss is computed on);
# * dropped, oldest first: whole turns of the prompt after the task (an assistant message with the
#   observations that follow it), until the sample fits; the loss mask still covers only whole
#   assistant turns of the completions (prompt turns are never trained);
# * skipped: a sample whose kept part alone does not fit.
#
# A text of n characters has at least n / (longest vocabulary entry) tokens, so a message longer
# than ``max_tokens`` times that is known to be too long from its length alone, without tokenising.

TURN_OVERHEAD_TOKENS = 8  # role header and end-of-turn tokens of one message, a generous estimate


class TooLongError(ValueError):
    """A sample that does not fit ``max_row_tokens`` even with every droppable prompt turn dropped."""


def max_token_chars(tokenizer) -> int:
    """Characters in the tokenizer's longest vocabulary entry: an upper bound on what one token
    covers (byte-level entries spell one character per byte)."""
    return max(1, max((len(t) for t in tokenizer.get_vocab()), default=1))


def _text(message: dict) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else "" if content is None else str(content)


def _head_length(prompt: list[dict]) -> int:
    """Messages up to and including the first user message (system prompt and task)."""
    for i, m in enumerate(prompt):
        if m.get("role") == "user":
            return i + 1
    return len(prompt)


def _turns(messages: list[dict]) -> list[int]:
    """Start indices of the droppable turns: each assistant message begins one (with the
    observations after it); messages before the first assistant form the first turn."""
    starts = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    return starts if starts and starts[0] == 0 else [0, *starts] if messages else []


def fit_prompts(tokenizer, prompt: list[dict], completions: list[list[dict]], max_tokens: int,
                token_chars: int, prompt_copies: int = 1):
    """Prompts to try, from the fewest dropped turns up: ``(prompt, n_dropped_messages)``, starting
    at the estimated number (per-message token counts) that fits ``max_tokens``. ``prompt_copies``:
    how often the prompt is counted (1 when chosen and rejected share its forward pass). The caller
    tokenises each candidate and takes the first that fits. Raises :class:`TooLongError` if the
    task and the completions alone cannot fit."""
    everything = [*prompt, *(m for c in completions for m in c)]
    if sum(len(_text(m).encode()) + TURN_OVERHEAD_TOKENS for m in everything) * prompt_copies <= max_tokens:
        yield prompt, 0  # fewer bytes than tokens allowed: fits as it is (the caller checks), nothing to estimate
    limit_chars = max_tokens * token_chars
    head_len = _head_length(prompt)
    head, rest = prompt[:head_len], prompt[head_len:]
    kept = (("the task (system and first user message)", head), ("a completion", [m for c in completions for m in c]))
    for where, msgs in kept:
        if sum(len(_text(m)) for m in msgs) > limit_chars:
            raise TooLongError(f"longer than max_row_tokens={max_tokens}; {where} alone")

    def estimate(msgs: list[dict]) -> float:
        total = 0.0
        for m in msgs:
            text = _text(m)
            if len(text) > limit_chars:
                return float("inf")
            total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + TURN_OVERHEAD_TOKENS
        return total

    fixed = estimate(head) * prompt_copies + sum(estimate(c) for c in completions)
    if fixed > max_tokens:
        raise TooLongError(f"longer than max_row_tokens={max_tokens}; the task and completions alone take "
                           f"~{fixed:.0f} tokens")
    starts = _turns(rest)
    turn_costs = [estimate(rest[a:b]) * prompt_copies for a, b in zip(starts, [*starts[1:], len(rest)])]
    first = 0
    while first < len(starts) and fixed + sum(turn_costs[first:]) > max_tokens:
        first += 1
    for k in range(first, len(starts) + 1):
        cut = starts[k] if k < len(starts) else len(rest)
        yield head + rest[cut:], cut
