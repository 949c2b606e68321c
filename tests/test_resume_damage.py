"""Resuming an unfinished ``hpl-gen`` folder that was damaged or moved: a truncated or empty shard
is named and its task redone, a copy at another path resumes, and the tables equal an undisturbed
run's; a finished folder ignores damage, and really changed flags are still refused."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from rich.console import Console

from hpl_data.gen import GenConfig, Generation, GenError, data_identity
from hpl_data.shards import ShardStore

ARGS = {"env": "webshop", "limit": 4, "workers": 1, "mc_rollouts": 2, "seed": 5, "progress": False}
TABLES = ("trajectories_expert", "trajectories_policy", "traj_pairs", "step_pairs", "group_pairs")


def generate(out: Path, **overrides) -> str:
    """One in-process run (what ``hpl-gen`` runs); its console output."""
    buf = io.StringIO()
    Generation(GenConfig(**{**ARGS, **overrides}, out=out), Console(file=buf, width=1000, soft_wrap=True)).run()
    return buf.getvalue()


def rows(out: Path) -> dict[str, list[dict]]:
    return {name: pq.read_table(out / f"{name}.parquet").to_pylist() for name in TABLES}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    generate(out)
    return out


def unfinished_copy(reference: Path, dest: Path) -> Path:
    """The reference run as a run killed just before its tables: every shard, no table; at another path."""
    shutil.copytree(reference, dest)
    for table in dest.glob("*.parquet"):
        table.unlink()
    manifest = json.loads((dest / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps({"config": manifest["config"], "finished": False}))
    return dest


def shard(out: Path, stage: str, index: int = 0) -> Path:
    return sorted((out / ".shards" / stage).glob("*.json"))[index]


def test_damaged_shards_are_named_and_redone_in_a_moved_unfinished_run(reference, tmp_path):
    out = unfinished_copy(reference, tmp_path / "elsewhere" / "moved")
    truncated, emptied = shard(out, "trajectories_policy", 1), shard(out, "mc_group_step", 2)
    truncated_task, emptied_task = json.loads(truncated.read_text())["task_id"], json.loads(emptied.read_text())["task_id"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    emptied.write_bytes(b"")

    log = generate(out)

    warnings = [line for line in log.splitlines() if line.startswith("hpl-gen: shard")]
    assert len(warnings) == 2, log
    assert re.fullmatch(rf"hpl-gen: shard {re.escape(str(truncated))} is damaged \(truncated or not JSON: "
                        rf"[^()]+: char \d+ of \d+\); redoing task {truncated_task}", warnings[0]), warnings
    assert warnings[1] == f"hpl-gen: shard {emptied} is damaged (empty file); redoing task {emptied_task}"
    assert "policy: resuming, 3 of 4 tasks already done" in log  # the moved folder resumed
    assert rows(out) == rows(reference)
    assert json.loads(truncated.read_text())["task_id"] == truncated_task  # whole again
    assert json.loads((out / "manifest.json").read_text())["finished"] is True
    assert not list(out.rglob("*.tmp"))


def test_a_finished_folder_ignores_damage(reference, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(reference, out)
    shard(out, "trajectories_expert").write_bytes(b'{"task_id": "150')
    shard(out, "mc_group_step").write_bytes(b"")
    log = generate(out)
    assert "hpl-gen: shard" not in log and "reusing" in log
    assert rows(out) == rows(reference)


def test_really_changed_flags_are_still_refused(reference, tmp_path):
    out = unfinished_copy(reference, tmp_path / "changed")
    with pytest.raises(GenError, match="different config"):
        generate(out, seed=6)
    config = GenConfig(**ARGS, out=reference).as_dict()
    assert data_identity({**config, "out": str(tmp_path / "x")}) == data_identity(config)
    assert data_identity({**config, "mc_rollouts": 3}) != data_identity(config)


def test_shard_store_names_every_kind_of_damage(tmp_path):
    warned: list[str] = []
    store = ShardStore(tmp_path, "stage", warn=warned.append)
    for task in ("a", "b", "c", "d", "e"):
        store.put(task, {"rows": [task]})
    path = {t: Path(store.out.uri(store._name(t))) for t in "abcde"}
    path["b"].write_bytes(path["b"].read_bytes()[:-3])
    path["c"].write_bytes(b"  \n")
    path["d"].write_bytes(b"\xff\xfe{")
    path["e"].write_bytes(path["a"].read_bytes())  # a whole shard, of another task

    assert store.pending(list("abcdef")) == list("bcdef")
    assert [re.sub(r"shard \S+ ", "shard X ", w) for w in warned] == [
        "shard X is damaged (truncated or not JSON: Unterminated string starting at: char 26 of 28); redoing task b",
        "shard X is damaged (empty file); redoing task c",
        "shard X is damaged (not UTF-8 text: invalid start byte at byte 0); redoing task d",
        "shard X is damaged (it holds task 'a', not 'e'); redoing task e",
    ]
    assert all(str(path[t]) in w for t, w in zip("bcde", warned))
    with pytest.raises(ValueError, match=f"^shard {re.escape(str(path['c']))} is damaged \\(empty file\\); rerun"):
        store.get("c")
    store.put("b", {"rows": ["b"]})
    assert store.get("b") == {"task_id": "b", "rows": ["b"]}
