import pytest

from hpl_envs.prompts import first_message, load_prompt
from hpl_envs.react import format_observation, format_turn, parse_react


@pytest.mark.parametrize("text,action,ok", [
    ("Thought: I should search.\nAction: search[red shoes]", "search[red shoes]", True),
    ("Action: click[buy now]", "click[buy now]", True),
    ("action: click[b0743jkhbv]\n", "click[b0743jkhbv]", True),
    ("**Action:** click[< prev]", "click[< prev]", True),
    ("Thought: hmm\nAction:\n```\nclick[features]\n```", "click[features]", True),
    ("Thought: x\nAction: `search[a b]`\nObservation: something the model hallucinated", "search[a b]", True),
    ("Thought: first\nAction: search[a]\nThought: second\nAction: search[b]", "search[b]", True),
    ("I will just click[buy now]", "I will just click[buy now]", False),
    ("", "", False),
    ("Action: 'click[description]'", "click[description]", True),
])
def test_parse_react(text, action, ok):
    parsed = parse_react(text)
    assert parsed.action == action and parsed.ok == ok


def test_parse_keeps_thought_and_multiline_sql():
    p = parse_react("Thought: look at tables\nAction: SELECT *\nFROM t\nWHERE x = 1", multiline=True)
    assert p.thought == "look at tables" and p.action == "SELECT *\nFROM t\nWHERE x = 1"
    assert parse_react(None).ok is False


def test_format_roundtrip():
    assert parse_react(format_turn("click[x]", "because", "webshop")).action == "click[x]"
    assert format_turn("click[x]", None, "webshop") == "Action: click[x]"
    assert format_observation("page", "webshop") == "Observation:\npage"
    assert format_observation("You see a desk 1.", "alfworld") == "Observation: You see a desk 1."
    sql_turn = format_turn("SELECT 1", "t", "intercode-sql")
    assert sql_turn == "Thought: t\nAction: \n```sql\nSELECT 1\n```"
    assert parse_react(sql_turn, multiline=True).action == "SELECT 1"
    assert format_turn("submit", None, "intercode-sql") == "Action: submit"
    assert format_turn(" SKIP", None, "sql") == "Action:  SKIP"  # an alias; control words stay bare


def test_format_needs_the_env_and_takes_its_profile():
    """Each env writes its turns its own way (the profile's facts): no env is a TypeError, not
    silently WebShop's format; a profile object gives the same turns as its name."""
    from hpl_envs.registry import PROFILES

    with pytest.raises(TypeError):
        format_observation("page")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        format_turn("click[x]", "because")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown env 'nope'"):
        format_turn("x", None, "nope")
    for name, prof in PROFILES.items():
        assert format_observation("o", prof) == format_observation("o", name)
        assert format_turn("SELECT 1", "t", prof) == format_turn("SELECT 1", "t", name)
    assert {n for n, p in PROFILES.items() if format_turn("a", None, p) != "Action: a"} == {"intercode-sql"}


def test_default_prompt_layout():
    msg = first_message("webshop", "WebShop [SEP] Instruction: [SEP] buy socks [SEP] Search")
    assert msg.endswith("Now, it's your turn and here is the task.\nWebShop [SEP] Instruction: [SEP] buy socks [SEP] Search")
    assert "Here is an example." in msg and "Action: search[" in msg


@pytest.mark.parametrize("source", ["ipr", "eto"])
def test_ipr_eto_prompt_files(source):
    inst, icl = load_prompt("webshop", source)
    assert "search[keywords]" in inst
    assert icl[0][0]["role"] == "user" and icl[0][1]["role"] == "assistant"
    assert icl[0][1]["content"].startswith("Thought:")


@pytest.mark.parametrize("env", ["webshop", "alfworld", "intercode-sql"])
def test_every_env_has_a_default_prompt(env):
    inst, icl = load_prompt(env, "default")
    conv = icl[0]
    assert inst and conv[0]["role"] == "user" and conv[-1]["role"] == "assistant"
    assert all(parse_react(m["content"], multiline=True).ok for m in conv if m["role"] == "assistant")
    assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2)


def test_ipr_prompts_for_sql_and_alfworld():
    for env in ("intercode-sql", "alfworld"):
        inst, icl = load_prompt(env, "ipr")
        assert inst and icl[0][1]["role"] == "assistant"
    inst, icl = load_prompt("alfworld", "eto")  # ETO marks assistant turns with "from": "gpt"
    assert icl[0][1]["role"] == "assistant"


def test_readme_llm_loop_runs(webshop_env):
    """The README's 'Using a real LLM' loop, with a scripted 'model' that answers in ReAct format."""
    from hpl_envs.agents import make_agent
    from hpl_envs.prompts import initial_messages

    env = webshop_env
    oracle = make_agent("webshop", "oracle")
    obs, info = env.reset(options={"task_id": env.task_ids("test")[0]})
    oracle.reset(env, obs, info)

    def chat(messages):
        assert messages[-1]["role"] == "user"
        return f"Thought: following the plan.\nAction: {oracle.act(None, None)}"

    messages = initial_messages("webshop", obs, source="default")
    done = False
    while not done:
        reply = chat(messages)
        action = parse_react(reply).action
        obs, reward, terminated, truncated, info = env.step(action)
        messages += [{"role": "assistant", "content": reply},
                     {"role": "user", "content": format_observation(obs, "webshop")}]
        done = terminated or truncated
    assert reward == 1.0 and info["won"]
