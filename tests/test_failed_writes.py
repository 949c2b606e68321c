"""A write that fails (a really full filesystem: a small tmpfs) leaves no temporary file and the
old file intact, in the helper and in what ``hpl-eval`` and ``hpl-gen`` write."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hpl_data import cli_eval, cli_gen
from hpl_data.shards import ShardStore
from hpl_data.storage import Output, replacing, write_atomically

PAGE = 4096


@pytest.fixture
def disk(tmp_path):
    """A 128 KiB tmpfs: writes past it fail with ENOSPC, as on a full disk."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"no tmpfs can be mounted here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Take all but ``leave`` bytes (whole pages) of the filesystem."""
    st = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    assert os.statvfs(disk).f_bavail * PAGE == leave


def leftovers(disk: Path) -> list[str]:
    return sorted(p.name for p in disk.rglob("*") if p.name.endswith(".tmp"))


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(disk):
    old = disk / "summary.json"
    old.write_text('{"old": true}')
    fill(disk, 2 * PAGE)
    with pytest.raises(OSError) as e:
        write_atomically(old, "x" * (5 * PAGE))
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError), replacing(disk / "t.parquet") as tmp:  # a library writing to the path
        pq.write_table(pa.table({"x": list(range(100_000))}), tmp, compression="none")
    out = Output(disk)
    with pytest.raises(OSError):
        out.write_text("manifest.json", "y" * (5 * PAGE))
    store = ShardStore(out, "stage")
    store.put("a", {"rows": [1]})
    with pytest.raises(OSError):
        store.put("a", {"rows": ["z" * 5 * PAGE]})
    assert old.read_text() == '{"old": true}' and store.get("a") == {"task_id": "a", "rows": [1]}
    assert leftovers(disk) == [] and sorted(p.name for p in disk.iterdir()) == [".shards", "filler", "summary.json"]


def test_hpl_gen_on_a_full_disk(disk, capsys):
    """No room for the manifest (the 0-byte ``.manifest.json.<pid>.tmp`` of old), then room for a
    few shards: one line, exit 2, no temporary file, the shards written are whole."""
    args = ["--env", "webshop", "--limit", "6", "--workers", "1", "--no-progress"]
    fill(disk, 0)
    assert cli_gen.main([*args, "--out", str(disk / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hpl-gen: ") and "No space left on device" in err[0], err
    assert leftovers(disk) == []
    (disk / "filler").unlink()
    fill(disk, 10 * PAGE)
    assert cli_gen.main([*args, "--out", str(disk / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hpl-gen: ") and "No space left on device" in err[-1], err
    assert leftovers(disk) == []
    shards = list((disk / "run" / ".shards" / "trajectories_expert").glob("*.json"))
    assert 0 < len(shards) < 6 and all(json.loads(s.read_text())["rows"] for s in shards)


def test_hpl_eval_on_a_full_disk_keeps_the_old_summary(disk, tmp_path, capsys):
    """Room for the trajectories but not for the summary JSON (the partial ``x.json.tmp`` of old)."""
    args = ["--env", "webshop", "--agent", "heuristic", "--limit", "3", "--workers", "1", "--quiet"]
    roomy = tmp_path / "roomy" / "x.json"
    assert cli_eval.main([*args, "--out", str(roomy)]) == 0
    parquet_pages = -(-roomy.with_suffix(".trajectories.parquet").stat().st_size // PAGE)
    capsys.readouterr()
    old = disk / "x.json"
    old.write_text('{"old": true}')
    fill(disk, parquet_pages * PAGE)
    assert cli_eval.main([*args, "--out", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hpl-eval: ") and "No space left on device" in err[0], err
    assert old.read_text() == '{"old": true}' and leftovers(disk) == []
    assert pq.read_table(disk / "x.trajectories.parquet").num_rows == 3  # it was the summary that failed
