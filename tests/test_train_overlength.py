"""hpl-train on over-length samples: a 60 kB and a 5 MB prompt are truncated (oldest whole prompt
turns dropped, task and completions kept) or skipped by the rule in hpl_train.tokenize, counted in
the log and the metrics, and the run trains with a peak RSS close to a run without them."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("accelerate")

from hpl_data.tiny_model import build_tiny_model  # noqa: E402
from hpl_train.data import load_train_data  # noqa: E402

MAX_ROW_TOKENS = 1024
TASK = "WebShop [SEP] Instruction: [SEP] i need a red cotton shirt for men, price lower than 30.00 dollars"


def _turn(i: int, observation: str) -> list[dict]:
    return [{"role": "assistant", "content": f"Thought: look at result {i}.\nAction: click[item {i}]"},
            {"role": "user", "content": observation}]


def _pair(i: int, middle: list[dict], task: str = TASK) -> dict:
    return {"prompt": [{"role": "user", "content": task}, *middle],
            "chosen": [{"role": "assistant", "content": f"Action: click[buy now {i}]"}],
            "rejected": [{"role": "assistant", "content": f"Action: click[< prev {i}]"}],
            "delta_r": 0.5, "task_id": f"t{i}", "level": "step"}


def _normal(i: int) -> dict:
    return _pair(i, _turn(0, f"Observation: [SEP] Back to Search [SEP] Page 1 [SEP] B0{i} [SEP] Red Shirt {i}"))


# ~64 kB: a hundred turns with 600-character observations (~20k tokens of the tiny tokenizer)
LONG = _pair(100, [m for t in range(100) for m in _turn(t, f"Observation {t}: " + "red cotton shirt $9.99 [SEP] " * 20)])
# 5 MB in one old observation: dropped without being tokenised
HUGE_OBSERVATION = _pair(101, _turn(0, "x" * 5_000_000) + _turn(1, "Observation: [SEP] Red Shirt [SEP] $9.99"))
# 5 MB in the task itself: nothing may be dropped, so the sample is skipped
HUGE_TASK = _pair(102, _turn(0, "Observation: ok"), task=TASK + " " + "y" * 5_000_000)


def _write(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "step_pairs.parquet")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    base = tmp_path_factory.mktemp("overlength")
    normal = [_normal(i) for i in range(16)]
    return _write(base / "plain", normal), _write(base / "long", [*normal, LONG, HUGE_OBSERVATION, HUGE_TASK])


def test_rule_keeps_task_and_whole_completions(tiny, tables):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    data = load_train_data(tok, [str(tables[1])], kinds={"step"}, max_row_tokens=MAX_ROW_TOKENS)
    assert data.truncated["step"] == 2 and data.metrics()["data/skipped_too_long/step"] == 1
    assert "row 18: longer than max_row_tokens=1024; the task (system and first user message) alone" \
        in data.examples["step"]
    segs = {s.index: s for s in data.segments["step"]}
    assert sorted(segs) == list(range(18))
    for index, pair in ((16, LONG), (17, HUGE_OBSERVATION)):
        seg = segs[index]
        assert seg.n_tokens <= MAX_ROW_TOKENS
        text = tok.decode(seg.prefix)
        assert TASK in text and "x" * 1000 not in text  # the task stays, the 5 MB observation went
        assert pair["prompt"][-1]["content"] in text  # the newest turns stay
        for (ids, trainable), side in zip(seg.branches, ("chosen", "rejected")):
            trained = tok.decode([t for t, m in zip(seg.prefix + ids, seg.prefix_trainable + trainable) if m])
            assert pair[side][0]["content"] in trained and "Observation" not in trained  # whole reply, no context
    kept_turns = tok.decode(segs[16].prefix).count("Action: click[item ")
    assert 0 < kept_turns < 100


def _train(tiny, data, out) -> tuple[int, str]:
    """hpl-train in a fresh process; returns (its peak RSS in kB, its output)."""
    code = ("import resource, sys; from hpl_train.cli import main; rc = main(sys.argv[1:]); "
            "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "--config", "hpl", "--model", str(tiny), "--data", str(data),
                        "--output-dir", str(out), "report_to=none", "save_model=false", "max_steps=3", "batch_size=4", "eval_fraction=0",
                        f"max_row_tokens={MAX_ROW_TOKENS}"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return int(p.stdout.split("peak_rss_kb")[-1].split()[0]), p.stdout + p.stderr


def test_hpl_train_truncates_skips_reports_and_trains(tiny, tables, tmp_path):
    plain_rss, _ = _train(tiny, tables[0], tmp_path / "plain")
    long_rss, log = _train(tiny, tables[1], tmp_path / "long")
    assert "truncated 2 step sample(s) to max_row_tokens=1024" in log
    assert "skipped 1 step sample(s): longer than max_row_tokens=1024" in log
    metrics = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["loss"] == m["loss"] for m in metrics)  # trained, finite losses
    first = metrics[0]
    assert (first["data/samples/step"], first["data/truncated/step"], first["data/skipped_too_long/step"]) == (18, 2, 1)
    assert long_rss <= 1.5 * plain_rss, (long_rss, plain_rss)
    print(f"peak RSS: {plain_rss / 1024:.0f} MB without the long samples, {long_rss / 1024:.0f} MB with them")
