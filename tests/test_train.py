"""hpl-train: masks, losses, prefix sharing, the training loop, curriculum, resume, 2 processes."""

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("accelerate")

from hpl_data.tiny_model import LLAMA3_SPECIAL_TOKENS, LLAMA3_TEMPLATE, build_tokenizer  # noqa: E402
from hpl_train.config import load_config  # noqa: E402
from hpl_train.curriculum import allowed, bucket  # noqa: E402
from hpl_train.data import load_train_data  # noqa: E402
from hpl_train.losses import dpo_loss  # noqa: E402
from hpl_train.packing import collate, pack, sequence_logps  # noqa: E402
from hpl_train.tokenize import AlignmentError, tokenize_conversation  # noqa: E402

PROMPT = [{"role": "user", "content": "Buy a red shirt under 20 dollars."}]
COMPLETION = [{"role": "assistant", "content": "Thought: search first.\nAction: search[red shirt]"},
              {"role": "user", "content": "Observation:\n[SEP] B01 [SEP] Red Shirt [SEP] $9.99"},
              {"role": "assistant", "content": "Action: click[b01]"}]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test builds its own Accelerator; TRL's Trainer leaves a process-wide AcceleratorState
    with other settings behind, which a later Accelerator(...) would refuse."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny random Qwen2 through its public command, so every training test loads its output."""
    from hpl_data.cli_data import main as hpl_data

    out = tmp_path_factory.mktemp("tiny") / "model"
    assert hpl_data(["model", "tiny", "--out", str(out)]) == 0
    return out


def test_model_tiny_command_is_reused_refuses_other_folders_and_loads_as_hf_policy(tiny, tmp_path, capsys):
    import asyncio

    from hpl_data.cli_data import main as hpl_data
    from hpl_data.engine import EngineConfig, RolloutEngine
    from hpl_data.policies import SamplingParams
    from hpl_data.policies.hf_backend import HFPolicy

    weights = (tiny / "model.safetensors").stat().st_mtime_ns
    assert hpl_data(["model", "tiny", "--out", str(tiny)]) == 0 and (tiny / "model.safetensors").stat().st_mtime_ns == weights
    (tmp_path / "notes.txt").write_text("mine")
    assert hpl_data(["model", "tiny", "--out", str(tmp_path)]) == 2
    assert "holds something else" in " ".join(capsys.readouterr().out.split()) and (tmp_path / "notes.txt").read_text() == "mine"

    async def run():
        cfg = EngineConfig(workers=1, concurrency=1, sampling=SamplingParams(temperature=1.0, max_tokens=8))
        async with RolloutEngine("webshop", HFPolicy(str(tiny)), env_kwargs={"max_turns": 1}, config=cfg) as eng:
            return await eng.run(["0"])

    (ep,) = asyncio.run(run())
    assert ep["error"] is None and len(ep["steps"]) == 1


def test_one_writer_at_a_time_converts_a_model_folder(tmp_path):
    """Two processes asking for the same model folder (two test workers on one cache): the second
    waits for the first's lock and then reuses its folder instead of writing (and replacing) it again."""
    import threading
    import time

    # imported before the threads start: transformers' lazy imports are not thread-safe
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: F401

    from hpl_data.models import one_writer, written_atomically
    from hpl_data.tiny_model import TINY_STAMP, build_tiny_model, write_tiny_model

    out = tmp_path / "tiny"
    with one_writer(out):
        second = threading.Thread(target=write_tiny_model, args=(out,))
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and not out.exists()  # waiting for the lock
        with written_atomically(out, TINY_STAMP) as tmp:  # the first writer's conversion
            build_tiny_model(tmp, seed=TINY_STAMP["seed"])
        first = (out / "model.safetensors").stat().st_ino
    second.join(timeout=120)
    assert not second.is_alive() and (out / "model.safetensors").stat().st_ino == first  # reused, not replaced


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "webshop"
    subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--expert", "oracle", "--policy",
                    "heuristic", "--split", "train", "--limit", "20", "--out", str(out)], check=True,
                   capture_output=True, timeout=600)
    return out


def trained_text(tok, conv):
    return tok.decode([i for i, m in zip(conv.ids, conv.trainable) if m])


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_only_action_tokens_are_trained(family, tiny, tmp_path):
    from transformers import AutoTokenizer

    if family == "chatml":
        tok, end = AutoTokenizer.from_pretrained(tiny), "<|im_end|>\n"
    else:
        tok = build_tokenizer(tmp_path, chat_template=LLAMA3_TEMPLATE, special_tokens=LLAMA3_SPECIAL_TOKENS,
                              eos_token="<|eot_id|>", pad_token="<|end_of_text|>")
        end = "<|eot_id|>"
    conv = tokenize_conversation(tok, PROMPT, COMPLETION)
    assert trained_text(tok, conv) == COMPLETION[0]["content"] + end + COMPLETION[2]["content"] + end
    assert conv.ids == tok.apply_chat_template(PROMPT + COMPLETION, tokenize=True, return_dict=False)
    assert not any(conv.trainable[: conv.prompt_len])
    # the expert prefix of a step pair lives in the prompt: context, not trained
    conv2 = tokenize_conversation(tok, PROMPT + COMPLETION[:2], COMPLETION[2:])
    assert trained_text(tok, conv2) == COMPLETION[2]["content"] + end and conv2.ids == conv.ids


def test_template_that_rewrites_earlier_turns_is_reported(tmp_path, gen_data):
    strip_thoughts = (  # drops the thought of every assistant turn but the last, like reasoning templates
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n' + m['content'].split('Action:')[-1] + '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok = build_tokenizer(tmp_path, chat_template=strip_thoughts)
    with pytest.raises(AlignmentError, match="renders earlier turns differently"):
        tokenize_conversation(tok, PROMPT, COMPLETION)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": PROMPT, "chosen": COMPLETION, "rejected": COMPLETION[:1]},
            {"prompt": PROMPT, "chosen": COMPLETION[:1], "rejected": [{"role": "assistant", "content": "Action: x"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    data = load_train_data(tok, [str(tmp_path / "pairs.parquet")])
    assert len(data.segments["traj"]) == 1 and sum(n for (k, _), n in data.skipped.items() if k == "traj") == 1
    assert "renders earlier turns differently" in data.report()


def test_dpo_loss_matches_paper_equations():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(64, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    beta = 0.3
    loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta)
    direct = -torch.log(torch.sigmoid(beta * (pc - rc) - beta * (pr - rr)))  # Eq. 3-5, written out
    finite = torch.isfinite(direct)
    assert torch.allclose(loss[finite], direct[finite], rtol=1e-12, atol=1e-12)
    assert torch.allclose(cr, beta * (pc - rc)) and torch.allclose(rj, beta * (pr - rr))
    big = dpo_loss(torch.tensor([0.0]), torch.tensor([1000.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)[0]
    assert torch.isfinite(big).all() and big.item() == pytest.approx(1000.0)  # stable where the direct form overflows


def test_prefix_shared_forward_equals_separate_forwards(tiny, gen_data):
    """Tolerance: 1e-4 absolute on sums of ~100-1,000 fp32 token log-probs (observed ~2e-5)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    shared = load_train_data(tok, [str(gen_data)], kinds={"step", "group"})
    plain = load_train_data(tok, [str(gen_data)], kinds={"step", "group"}, share_prefix=False)
    segs_s = shared.segments["step"][:3] + shared.segments["group"][:3]
    segs_p = plain.segments["step"][:3] + plain.segments["group"][:3]
    assert all(len(s.prefix) > 100 for s in segs_s)  # these pairs really share a long context
    with torch.no_grad():
        a = sequence_logps(model, collate([pack(segs_s, 100_000)[0]]))
        b = torch.cat([sequence_logps(model, collate([[s]])) for s in segs_p])
        order = {id(s): i for i, s in enumerate(segs_s)}
        packed_order = [order[id(s)] for s in pack(segs_s, 100_000)[0]]
        direct = []
        for seg in segs_p:  # plain causal forward per side, no packing code at all
            row = []
            for ids, train in seg.branches:
                logits = model(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
                lp = logits.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
                row.append(lp[torch.tensor(train[1:])].sum())
            direct.append(torch.stack(row))
        direct = torch.stack(direct)
    assert torch.allclose(b, direct, atol=1e-4)
    assert torch.allclose(a, b[packed_order], atol=1e-4)


def test_curriculum_buckets_and_phases():
    assert bucket(1, 1.0, (0, 2, 4)) == (1, 1) and bucket(3, 0.5, (0, 2, 4)) == (2, 2)
    assert bucket(7, 0.1, (0, 3, 6)) == (3, 3) and bucket(3, 0.7, (0, 3, 6)) == (1, 1)
    assert allowed(1) == {(1, 1)} and allowed(2) == {(1, 1), (1, 2), (2, 1)} and len(allowed(3)) == 9
    assert allowed(1, "length-only") == {(1, 1), (1, 2), (1, 3)} and len(allowed(1, "static")) == 9


def _cfg(tiny, data, out, *overrides):
    return load_config("hpl", ["report_to=none", "save_model=false", "lr=1e-3", "warmup_ratio=0", *overrides],
                       model=str(tiny), data=[str(data)], output_dir=str(out))


def test_all_four_losses_fall_on_a_fixed_batch(tiny, gen_data, tmp_path):
    from hpl_train.recipe import train

    hist = train(_cfg(tiny, gen_data, tmp_path, "max_steps=5", "batch_size=2", "fixed_batch=true",
                      "curriculum=static", "max_grad_norm=0"))
    first, last = hist[0], hist[-1]
    for k in ("loss/bc", "loss/traj", "loss/step", "loss/group"):
        assert k in first and k in last, k
        assert last[k] < first[k], (k, first[k], last[k])
    assert first["loss/traj"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0: log 2
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "training.png").stat().st_size > 5000


def test_group_buckets_are_read_from_the_data(tiny, tmp_path):
    """hpl-gen writes each group pair's buckets by its env's thresholds and records those thresholds
    in the table's metadata; the trainer keeps no copy of them: it takes the columns, else the
    recorded thresholds, unless the config sets its own; with neither, one clear error."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from hpl_data.parquet import build_table
    from hpl_envs.registry import profile
    from hpl_train.data import DataError, recorded_curriculum

    path = tmp_path / "group_pairs.parquet"
    row = {"prompt": PROMPT, "chosen": COMPLETION[:1], "rejected": [{"role": "assistant", "content": "Action: x"}],
           "level": "group", "group_length": 3, "delta_r": 0.5, "length_bucket": 2, "delta_bucket": 2}
    rows = [row, {**row, "length_bucket": None, "delta_bucket": None}]
    pq.write_table(build_table(rows, None, {"curriculum": profile("alfworld").curriculum()}), path)  # as hpl-gen
    assert recorded_curriculum(path) == {"length_thresholds": [0, 3, 6], "delta_thresholds": [1.0, 0.7, 0.4]}
    tok = AutoTokenizer.from_pretrained(tiny)

    def buckets(**kwargs):
        return [s.meta["bucket"] for s in load_train_data(tok, [str(tmp_path)], kinds={"group"}, **kwargs).segments["group"]]

    assert buckets() == [(2, 2), (1, 2)]  # the column; recomputed by the recorded (0, 3, 6): 3 actions <= 3
    assert buckets(length_thresholds=(0, 1, 2)) == [(3, 2), (3, 2)]  # an ablation's own thresholds
    assert buckets(delta_thresholds=(1.0, 0.4, 0.2)) == [(1, 1), (1, 1)]  # other ΔR cuts than the data's
    pq.write_table(pa.Table.from_pylist(rows), path)  # a table of other origin: no recorded thresholds
    with pytest.raises(DataError, match="set length_thresholds in the config"):
        buckets()
    assert buckets(length_thresholds=(0, 2, 4)) == [(2, 2), (2, 2)] and bucket(3, 0.5, (0, 2, 4)) == (2, 2)
    pq.write_table(pa.Table.from_pylist(rows[:1]), path)
    assert buckets() == [(2, 2)]  # its columns suffice


def test_curriculum_phases_switch_group_data_and_resume_reproduces(tiny, gen_data, tmp_path):
    from hpl_train.recipe import HPLRecipe, train

    over = ["max_steps=6", "batch_size=1", "bc_weight=0", "traj_weight=0", "step_weight=0", "save_every=3"]
    full = train(_cfg(tiny, gen_data, tmp_path / "a", *over))
    r = HPLRecipe(_cfg(tiny, gen_data, tmp_path / "probe", *over))
    r.setup()
    buckets = [s.meta["bucket"] for s in r.data.segments["group"]]
    sizes = {1: sum(b == (1, 1) for b in buckets), 2: sum(b in {(1, 1), (1, 2), (2, 1)} for b in buckets),
             3: len(buckets)}
    expect = {p: next(sizes[q] for q in range(p, 4) if sizes[q]) for p in (1, 2, 3)}  # empty phase -> next one
    assert [m["phase"] for m in full] == [1, 1, 2, 2, 3, 3]
    assert [m["group_pool"] for m in full] == [expect[m["phase"]] for m in full] and expect[1] < expect[3]
    # resume from the step-3 checkpoint in a fresh process state: steps 4-6 equal the uninterrupted run
    resumed = train(_cfg(tiny, gen_data, tmp_path / "b", *over,
                         f"resume_from={tmp_path / 'a' / 'checkpoints' / 'step-000003'}"))
    assert [m["step"] for m in resumed] == [4, 5, 6]
    for a, b in zip(full[3:], resumed):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["phase"] == b["phase"]


def _easy_pair_set(out, tasks: range):
    """Per task: two step pairs, one group pair and one expert trajectory, where the chosen side is
    always the same action and the rejected side always another: a preference a model can learn
    from some tasks and carry to others."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    good, bad = "Action: click[buy now]", "Action: search[zebra umbrella lamp]"
    obs = {"role": "user", "content": "Observation:\n[SEP] Buy Now [SEP] Back to Search"}
    step, group, expert = [], [], []
    for t in tasks:
        prompt = [{"role": "user", "content": f"Task {t}: buy item number {t * 7919 % 1000} in colour {t}."}]
        for k in range(2):
            p = prompt + [{"role": "assistant", "content": f"Action: search[item {t} {k}]"}, obs]
            step.append({"task_id": str(t), "prompt": p, "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}], "delta_r": 1.0})
        group.append({"task_id": str(t), "prompt": prompt, "group_length": 2, "delta_r": 1.0,
                      "chosen": [{"role": "assistant", "content": good}, obs, {"role": "assistant", "content": good}],
                      "rejected": [{"role": "assistant", "content": bad}, obs, {"role": "assistant", "content": bad}]})
        expert.append({"task_id": str(t), "messages": prompt + [{"role": "assistant", "content": good}]})
    out.mkdir(parents=True)
    for name, rows in (("step_pairs", step), ("group_pairs", group), ("trajectories_expert", expert)):
        pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
    return out


def test_heldout_pairs_share_no_task_and_their_accuracy_rises(tiny, tmp_path):
    from hpl_train.evaluate import task_keys
    from hpl_train.recipe import HPLRecipe

    data = _easy_pair_set(tmp_path / "data", range(20))  # not hpl-gen's: the config gives the length thresholds
    r = HPLRecipe(_cfg(tiny, data, tmp_path / "run", "max_steps=6", "batch_size=8", "traj_weight=0",
                       "eval_fraction=0.25", "eval_every=3", "length_thresholds=[0,2,4]"))
    r.setup()
    trained, held = task_keys(r.data), task_keys(r.heldout)
    assert len(held) == 5 and not trained & held and trained | held == {str(t) for t in range(20)}
    r.train()
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "eval/" in x]
    assert [e["step"] for e in evals] == [0, 3, 6]
    for e in evals:
        assert (e["eval/step/pairs"], e["eval/group/pairs"], e["eval/bc/samples"]) == (10, 5, 5)
        assert {"eval/step/accuracy", "eval/step/margin", "eval/group/accuracy", "eval/group/margin",
                "eval/bc_loss"} <= set(e)
    first, last = evals[0], evals[-1]
    assert first["eval/step/accuracy"] == first["eval/group/accuracy"] == 0  # policy == reference: ties
    assert max(last["eval/step/accuracy"], last["eval/group/accuracy"]) > 0.5, last
    assert last["eval/bc_loss"] < first["eval/bc_loss"]
    margins = json.loads((tmp_path / "run" / "eval_margins.json").read_text())
    assert len(margins["margins"]["step"]) == 10 and set(margins["tasks"]["step"]) == held
    # --eval-data: a separate output is the held-out set, and nothing is split off the training data
    other = _easy_pair_set(tmp_path / "other", range(100, 103))
    r2 = HPLRecipe(_cfg(tiny, data, tmp_path / "run2", "max_steps=1", f"eval_data={other}", "length_thresholds=[0,2,4]"))
    r2.setup()
    assert len(task_keys(r2.data)) == 20 and task_keys(r2.heldout) == {"100", "101", "102"}


def test_bad_inputs_exit_cleanly(tiny, tmp_path, cli_error):
    """In-process (hpl-train's process is tested by the torchrun runs); the one-line error is checked."""
    from hpl_train import cli

    assert "no such file or directory" in cli_error(cli, ["--model", str(tiny), "--data", str(tmp_path / "missing")])
    argv = ["--config", "hpl", "--model", str(tiny), "--data", str(tmp_path), "learning_rate=1"]
    assert "unknown option 'learning_rate'" in cli_error(cli, argv)
    (tmp_path / "traj_pairs.parquet").write_bytes(b"not parquet")
    argv = ["--model", str(tiny), "--data", str(tmp_path), "--output-dir", str(tmp_path / "o")]
    assert "not a readable Parquet file" in cli_error(cli, argv)


@pytest.mark.parametrize("row,expected", [
    ({"prompt": "Buy a shirt", "chosen": COMPLETION, "rejected": COMPLETION}, "column 'prompt' holds string"),
    ({"prompt": PROMPT, "chosen": ["Action: a", "b"], "rejected": COMPLETION}, "column 'chosen' holds list<"),
    ({"prompt": PROMPT, "chosen": COMPLETION}, "no 'rejected' column"),  # used to train BC only, silently
    ({"prompt": PROMPT, "chosen": COMPLETION, "rejected": COMPLETION, "delta_r": "abc"}, "'delta_r' holds string"),
])
def test_malformed_pair_tables_are_one_line_errors(tiny, tmp_path, row, expected, cli_error):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hpl_train import cli

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    line = cli_error(cli, ["--model", str(tiny), "--data", str(path), "--output-dir", str(tmp_path / "o"), "max_steps=1",
                           "report_to=none"])
    assert line.startswith(f"hpl-train: {path}: ") and expected in line


def test_trl_dpo_trainer_accepts_hpl_gen_pairs(tiny, gen_data, tmp_path):
    """hpl-gen's pair tables load with `datasets` and train one step in TRL's DPOTrainer as they are."""
    trl = pytest.importorskip("trl")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datasets import concatenate_datasets, load_dataset

    parts = [load_dataset("parquet", data_files=str(gen_data / f"{lvl}_pairs.parquet"), split="train",
                          cache_dir=str(tmp_path / "hf")).select_columns(["prompt", "chosen", "rejected"])
             for lvl in ("traj", "step", "group")]
    ds = concatenate_datasets(parts).select(range(4))
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2, max_steps=1, beta=0.3,
                         max_length=None, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = trl.DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny), args=args, train_dataset=ds,
                             processing_class=AutoTokenizer.from_pretrained(tiny))
    out = trainer.train()
    assert out.global_step == 1 and torch.isfinite(torch.tensor(out.training_loss))


def test_lora_run_saves_a_model_that_policies_load(tiny, gen_data, tmp_path):
    """gen -> train (LoRA) -> eval: the merged final/ model drives WebShop episodes as an hf: policy."""
    import asyncio

    from hpl_data.engine import EngineConfig, RolloutEngine
    from hpl_data.policies import SamplingParams
    from hpl_data.policies.hf_backend import HFPolicy
    from hpl_train.recipe import train

    hist = train(load_config("eto", ["report_to=none", "max_steps=2", "batch_size=2", "lora_r=4", "lr=1e-3"],
                             model=str(tiny), data=[str(gen_data)], output_dir=str(tmp_path)))
    assert len(hist) == 2 and (tmp_path / "final" / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny)
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    diff = sum((a - b).abs().sum().item() for a, b in zip(base.parameters(), tuned.parameters()))
    assert diff > 0  # the LoRA update is merged into the saved weights

    async def run():
        policy = HFPolicy(str(tmp_path / "final"))
        cfg = EngineConfig(workers=1, concurrency=2, sampling=SamplingParams(temperature=1.0, max_tokens=16))
        async with RolloutEngine("webshop", policy, env_kwargs={"max_turns": 2}, config=cfg) as eng:
            return await eng.run(["0", "1"])

    eps = asyncio.run(run())
    assert all(e["error"] is None and len(e["steps"]) >= 1 for e in eps)


def test_two_machines_on_one_host_train_as_one_group_and_checkpoint(tiny, gen_data, tmp_path):
    """One 2-process run (torchrun's launch is ~20 s of both cores, so one run checks both sets of
    things). A multi-node launch on 127.0.0.1: two "machines" (torchrun --nnodes 2, node_rank 0/1,
    one process each, gloo), each with its own copy of the data and its own output folder, train as
    one 2-rank group: only the global rank 0 logs, each machine computed its reference log-probs; the
    held-out evaluation is gathered over both ranks; the checkpoint holds both ranks' RNG states.
    (torchrun, not ``accelerate launch --cpu``, which starts one independent process per launch
    whatever --num_processes says.)"""
    import shutil

    from hpl_data.policies.vllm_server import free_port

    port, procs = str(free_port()), []
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    for rank in (0, 1):
        data = tmp_path / f"machine{rank}" / "data"
        shutil.copytree(gen_data, data, ignore=shutil.ignore_patterns("ref_logps-*", ".shards"))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port, "-m", "hpl_train",
             "--config", "ipr", "--model", str(tiny), "--data", str(data), "--output-dir",
             str(tmp_path / f"machine{rank}" / "run"), "max_steps=2", "batch_size=2", "report_to=none", "lr=1e-4",
             "mixed_precision=no", "eval_fraction=0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env))
    try:
        for p in procs:
            _, err = p.communicate(timeout=900)
            assert p.returncode == 0, err[-4000:]
    finally:
        for p in procs:  # one machine failed: the other would wait for it
            if p.poll() is None:
                p.kill()
                p.wait()
    run0 = tmp_path / "machine0" / "run"
    rows = [json.loads(x) for x in (run0 / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2] and all("loss/step" in r for r in train_rows)
    assert not (tmp_path / "machine1" / "run" / "metrics.jsonl").exists()  # rank 1: one group, not two runs
    for rank in (0, 1):
        assert list((tmp_path / f"machine{rank}" / "data").glob("ref_logps-*.pt"))
    # held-out evaluation at step 0 and at the end, gathered over both ranks; each process scores
    # every other pair, and the gathered margins are all there (a pair no process scored would be 0)
    assert [r["step"] for r in rows if "eval/bc_loss" in r] == [0, 2]
    evals = [r for r in rows if "eval/step/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2]
    margins = json.loads((run0 / "eval_margins.json").read_text())["margins"]
    assert len(margins["step"]) == evals[-1]["eval/step/pairs"] >= 2 and all(m != 0.0 for m in margins["step"])
    ckpts = [tmp_path / f"machine{rank}" / "run" / "checkpoints" / "step-000002" for rank in (0, 1)]
    assert (ckpts[0] / "hpl_state.json").exists()
    assert sorted(p.name for c in ckpts for p in c.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                                      "random_states_1.pkl"]
    assert (run0 / "final" / "model.safetensors").exists()
