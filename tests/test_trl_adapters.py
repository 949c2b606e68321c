"""hpl's envs as TRL ``environment_factory`` environments (hpl_envs.integrations.trl).

The oracle's plan, played through the tool methods, reaches reward 1.0 on two tasks of each env;
bad tool input gets the env's own answer; and TRL's own GRPOTrainer (its code unchanged) trains two
steps on WebShop through the adapter with a tiny local model that calls the tools: its tool calls
go through TRL's parsing and loop into the env, and the env's rewards reach the trainer's logs.
"""

from __future__ import annotations

import inspect
import json

import pytest

from hpl_envs.integrations.trl import (
    AlfWorldToolEnv,
    InterCodeSqlToolEnv,
    ToolEnv,
    WebShopToolEnv,
    adapter,
    task_prompts,
)
from hpl_envs.registry import PROFILES, load_entry_point, profile


def call_tool(env: ToolEnv, action: str) -> str:
    """An agent's text action as the call a model would make to the adapter's tools."""
    if isinstance(env, WebShopToolEnv):
        assert action.endswith("]"), action
        return env.search(action[len("search["):-1]) if action.startswith("search[") else env.click(action[6:-1])
    if isinstance(env, InterCodeSqlToolEnv):
        return env.submit() if action == "submit" else env.execute(action)
    return env.act(action)


def play_oracle(env: ToolEnv, task_id: str) -> tuple[float, int]:
    """(reward, tool calls) of the env's oracle playing ``task_id`` through the tools."""
    first = env.reset(task_id=task_id)
    assert env.info["instruction"].strip() and env.info["task_id"] == task_id
    assert env.env.observation in first
    oracle = load_entry_point(profile(env.env_name).agents["oracle"])()
    oracle.reset(env.env, env.env.observation, env.info)
    observation, calls = first, 0
    while not env.done:
        observation = call_tool(env, oracle.act(observation, env.info))
        calls += 1
        assert env.info["action_valid"], (task_id, env.actions[-1], observation)
        assert observation.startswith(env.env.observation)  # the tool returns what the env shows
    return env.get_reward(), calls


@pytest.fixture(scope="module")
def webshop_tools() -> WebShopToolEnv:
    return WebShopToolEnv(split="test")


@pytest.fixture(scope="module")
def alfworld_tools() -> AlfWorldToolEnv:
    return AlfWorldToolEnv(split="valid_seen")


@pytest.fixture(scope="module")
def sql_tools():
    env = InterCodeSqlToolEnv(split="dev")  # a local MariaDB, started for this module
    yield env
    env.env.close()


@pytest.mark.parametrize("fixture,tasks", [("webshop_tools", ["0", "3"]),
                                           ("alfworld_tools", None),
                                           ("sql_tools", ["0", "1"])])
def test_oracle_through_the_tools_reaches_reward_1(request, fixture, tasks):
    env = request.getfixturevalue(fixture)
    for task_id in tasks or env.env.task_ids("valid_seen")[:2]:
        reward, calls = play_oracle(env, task_id)
        assert (reward, env.won) == (1.0, True), (task_id, env.actions)
        assert calls == len(env.actions) >= 2
        assert env.get_reward() == 1.0  # what TRL reads after the rollout


def tool_names(cls: type[ToolEnv]) -> list[str]:
    """The methods TRL exposes as tools (its rule: public functions of the class but reset/get_reward)."""
    return [n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if n not in ("reset", "get_reward") and not n.startswith("_")]


def test_every_env_has_a_tool_class_whose_tools_trl_can_describe():
    from transformers.utils import get_json_schema

    expected = {"webshop": ["click", "search"], "alfworld": ["act"], "intercode-sql": ["execute", "submit"]}
    assert set(expected) == set(PROFILES)
    for name in PROFILES:
        cls = adapter(name)
        assert cls.env_name == name and tool_names(cls) == expected[name]
        bare = object.__new__(cls)  # bound methods, as TRL reads them from an instance
        for tool in tool_names(cls):
            schema = get_json_schema(getattr(bare, tool))["function"]
            assert schema["description"] and all(v["type"] == "string" and v["description"]
                                                 for v in schema["parameters"]["properties"].values())
    assert adapter("sql") is InterCodeSqlToolEnv


def test_bad_tool_input_gets_the_envs_answer_and_never_raises(webshop_tools, alfworld_tools, sql_tools):
    page = webshop_tools.reset(task_id="0")
    for element in ("no such element", "", "x" * 20_000, "a]\n[b"):
        assert webshop_tools.click(element) == page  # the original shows the same page again
        assert webshop_tools.info["action_valid"] is False
    assert webshop_tools.search("") == page
    assert webshop_tools.search("pillow " * 200_000) == page  # 1.4 MB: over the env's action length
    assert "Page 1" in webshop_tools.search("pillow\ncover")  # a newline is a space in a query
    assert webshop_tools.actions[-1] == "search[pillow cover]"

    alfworld_tools.reset(task_id=alfworld_tools.env.task_ids("valid_seen")[0])
    for command in ("", "fly to the moon", "go to desk 1\nlook", 12, "go to " + "x" * 1_000_000):
        assert alfworld_tools.act(command) == "Nothing happens."

    sql_tools.reset(task_id="0")
    assert sql_tools.execute("SELEC * FRM people").startswith("Error executing query:")
    assert sql_tools.execute("SELECT * FROM no_such_table").startswith("Error executing query:")
    assert sql_tools.execute("").startswith("Error executing query:")
    assert sql_tools.execute("SELECT " + "1," * 500_000 + "1").startswith("Error executing query:")
    for not_sql in ("submit", "skip"):  # execute never ends the episode
        assert sql_tools.execute(not_sql).startswith("Error executing query:") and not sql_tools.done
    assert sql_tools.get_reward() == 0.0
    sql_tools.submit()
    assert sql_tools.done
    assert sql_tools.execute("SHOW TABLES").startswith("The episode is over")  # after the end: text, no raise
    assert len(sql_tools.actions) == 5  # the refused 'submit'/'skip' never reached the env


def test_reset_draws_tasks_from_the_split_by_seed():
    ids = set(adapter("ws")(split="dev").env.task_ids("dev"))
    draws = [[e.reset() and e.info["task_id"] for _ in range(5)]
             for e in (WebShopToolEnv(split="dev", seed=7), WebShopToolEnv(split="dev", seed=7),
                       WebShopToolEnv(split="dev", seed=8))]
    assert draws[0] == draws[1] != draws[2]
    assert set(draws[0]) <= ids
    with pytest.raises(ValueError, match="unknown split"):
        AlfWorldToolEnv(split="tset")


def test_task_prompts_are_the_rows_reset_reads(webshop_tools):
    rows = list(task_prompts("webshop", "test", limit=3, with_environment=True))
    assert [r["task_id"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["prompt"] == [{"role": "user", "content": WebShopToolEnv.intro}]
    assert rows[0]["environment"] == "webshop"
    shuffled = [r["task_id"] for r in task_prompts("webshop", "test", limit=3, shuffle_seed=1)]
    assert shuffled != ["0", "1", "2"] and set(shuffled) <= set(webshop_tools.env.task_ids("test"))
    row = rows[1]
    text = webshop_tools.reset(**{k: v for k, v in row.items() if k != "environment"})  # as TRL calls it
    assert webshop_tools.info["task_id"] == "1" and webshop_tools.info["instruction"] in text


# --- TRL's own GRPOTrainer ---------------------------------------------------------------------
TASK = "3"  # a WebShop test task the oracle buys in three actions (no options to pick)


class CountingWebShop(WebShopToolEnv):
    """The adapter, recording the actions that reach the env and what ``get_reward`` hands to the trainer."""

    calls: list[str] = []
    rewards: list[float] = []

    def _act(self, action: str) -> str:
        taken = len(self.actions)
        observation = super()._act(action)
        if len(self.actions) > taken:
            CountingWebShop.calls.append(action)
        return observation

    def get_reward(self) -> float:
        reward = super().get_reward()
        CountingWebShop.rewards.append(reward)
        return reward


def oracle_calls(env: WebShopToolEnv, task_id: str) -> list[dict]:
    """The oracle's plan for ``task_id`` as tool calls."""
    env.reset(task_id=task_id)
    oracle = load_entry_point(profile("webshop").agents["oracle"])()
    oracle.reset(env.env, env.env.observation, env.info)
    calls = []
    for action in oracle.plan:
        name, arg = action[:-1].split("[", 1)
        calls.append({"name": name, "arguments": {"query" if name == "search" else "element": arg}})
    return calls


@pytest.fixture(scope="module")
def tool_calling_model(tmp_path_factory):
    """The tests' tiny Qwen2 with Qwen2.5's chat template (TRL knows how to parse its tool calls),
    taught one completion: the oracle's calls for TASK (search, click the product, buy). A random
    model this small never emits a parseable call; this one does, so the trainer's own generation,
    parsing and tool loop are what carry the calls to the env."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from hpl_data.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-qwen-tools"), chat_template=qwen2_5_chat_template)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    env = WebShopToolEnv(split="test")
    completion = "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in oracle_calls(env, TASK))
    prompt = [{"role": "user", "content": WebShopToolEnv.intro + env.reset(task_id=TASK)}]
    tools = [env.click, env.search]  # in TRL's order (inspect.getmembers: by name); the prompt must match
    prompt_ids = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    target = tokenizer(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target])
    labels = torch.tensor([[-100] * len(prompt_ids) + target])
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # ~130 steps: mean loss 3e-3 is sharp enough for sampling at temperature 0.5
        loss = model(input_ids=ids, labels=labels).loss
        if loss.item() < 3e-3:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 3e-3, loss.item()
    model.save_pretrained(path)
    return path, completion


def test_trl_parses_the_scripted_calls_and_they_change_the_env(tool_calling_model, webshop_tools):
    """TRL's own response parsing turns the completion into calls; run as TRL's loop runs them
    (``method(**arguments)``), they reach the env, change its page and end in a purchase."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import add_response_schema, parse_response

    path, completion = tool_calling_model
    tokenizer = add_response_schema(AutoTokenizer.from_pretrained(path))
    page = webshop_tools.reset(task_id=TASK)
    prefix = tokenizer.apply_chat_template([{"role": "user", "content": page}], add_generation_prompt=True,
                                           tokenize=True, return_dict=False)
    ids = tokenizer(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
    message = parse_response(tokenizer, ids, prefix=prefix, tools=[webshop_tools.search, webshop_tools.click])
    calls = [call["function"] for call in message["tool_calls"]]
    assert [c["name"] for c in calls] == ["search", "click", "click"]
    pages = [page]
    for call in calls:
        pages.append(getattr(webshop_tools, call["name"])(**call["arguments"]))
        assert pages[-1] != pages[-2]
    assert "Page 1" in pages[1] and "Buy Now" in pages[2] and "Thank you for shopping" in pages[3]
    assert webshop_tools.get_reward() == 1.0


def test_grpo_trainer_trains_through_the_adapter(tool_calling_model, tmp_path, monkeypatch):
    """Two GRPOTrainer steps on WebShop: the model's calls reach the env through TRL's tool loop,
    each rollout's reward is the env's ``get_reward()`` as the trainer logs it, and a group whose
    rewards differ moves the model. The factory alternates two configurations of the same task: the
    second ends the episode after 2 actions (``max_turns=2``), so its "buy now" comes too late and
    scores 0 while the first scores 1.0 -- the same prompt, the same calls, different env rewards."""
    import itertools

    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from datasets import Dataset

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    path, _ = tool_calling_model
    CountingWebShop.calls, CountingWebShop.rewards = [], []
    turns = itertools.cycle([10, 2])  # TRL keeps a pool of instances, one per rollout of a batch
    dataset = Dataset.from_list([row for row in task_prompts("webshop", "test") if row["task_id"] == TASK])
    config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=2, per_device_train_batch_size=2,
                        num_generations=2, max_completion_length=1536, max_tool_calling_iterations=1,
                        temperature=0.5, learning_rate=1e-5, logging_steps=1, report_to="none",
                        save_strategy="no", seed=0, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=str(path), args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(path),
                          environment_factory=lambda: CountingWebShop(split="test", max_turns=next(turns)))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()

    logs = [entry for entry in trainer.state.log_history if "rewards/CountingWebShop/mean" in entry]
    assert len(logs) == 2
    rewards = CountingWebShop.rewards  # one get_reward per rollout, 2 rollouts x 2 steps
    assert [sorted(rewards[:2]), sorted(rewards[2:])] == [[0.0, 1.0]] * 2
    for entry in logs:
        assert entry["rewards/CountingWebShop/mean"] == pytest.approx(0.5)
        assert entry["reward"] == pytest.approx(0.5)  # the env is the only reward source
        assert entry["reward_std"] == pytest.approx(2 ** -0.5) and entry["grad_norm"] > 0
        assert entry["tools/call_frequency"] == 3  # per rollout: search, click, buy now
    # what reached the env: 3 actions of the full episode, 2 of the short one (its "buy now" was refused)
    search, click, buy = (f"{c['name']}[{next(iter(c['arguments'].values()))}]"
                          for c in oracle_calls(WebShopToolEnv(split="test"), TASK))
    calls = CountingWebShop.calls
    assert (len(calls), calls.count(search), calls.count(click), calls.count(buy)) == (10, 4, 4, 2)
    assert any(not torch_equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b.detach())
