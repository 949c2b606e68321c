"""``hpl-gen --out URI``: shards and tables on a shared ``pyarrow.fs`` location, written whole
exactly once, resumed from there, and equal to the release's tables.

S3 is moto's S3 server on 127.0.0.1 (a fake: no real S3-compatible server installs here from
apt or PyPI; MinIO is neither), spoken to by pyarrow's real S3 client over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from test_gen import RELEASE, table_digests

from hpl_data.shards import ShardStore
from hpl_data.storage import Output

pytest.importorskip("moto")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(S3 filesystem, URI options) of an S3 server on 127.0.0.1 with a bucket ``hpl``."""
    from moto.server import ThreadedMotoServer

    from hpl_data.policies.vllm_server import free_port

    for k, v in CREDENTIALS.items():
        os.environ.setdefault(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing", allow_bucket_creation=True)
    fs.create_dir("hpl")
    yield fs, f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    server.stop()


def gen(out: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", *args, "--out", out],
                          capture_output=True, text=True, timeout=600, env={**os.environ, **CREDENTIALS})


def copy_tables(fs: pafs.FileSystem, prefix: str, dest) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for info in fs.get_file_info(pafs.FileSelector(prefix)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as src:
                (dest / info.base_name).write_bytes(src.read())


@pytest.mark.parametrize("where", ["file", "s3"])
def test_output_writes_whole_files_lists_and_removes(where, s3, tmp_path):
    fs, options = s3
    out = Output(f"file://{tmp_path}/o" if where == "file" else f"s3://hpl/unit-{os.getpid()}?{options}")
    assert (out.local is not None) == (where == "file")
    out.makedirs()
    store = ShardStore(out, "stage")
    assert store.pending(["a", "b", "c"]) == ["a", "b", "c"]
    store.put("b", {"rows": [1, 2]})
    assert store.pending(["a", "b", "c"]) == ["a", "c"] and store.get("b") == {"task_id": "b", "rows": [1, 2]}
    out.write_table("t.parquet", pa.table({"x": [1, 2, 3]}))
    assert out.read_table("t.parquet").column("x").to_pylist() == [1, 2, 3]
    assert out.names() == {"t.parquet"}  # no temporary file or object left behind
    assert len(out.names(".shards/stage")) == 1
    if where == "s3":
        assert out.uri("t.parquet") == f"s3://{out.path('t.parquet')}?{options}"
        assert fs.get_file_info(out.path("t.parquet")).size > 0
    out.remove(".shards")
    assert store.pending(["b"]) == ["b"] and not out.exists(".shards/stage")


@pytest.mark.slow
def test_hpl_gen_on_s3_equals_the_release_and_resumes_there(s3, tmp_path):
    """The release's WebShop tables, written to S3; then the MC tables and two tasks' MC shards
    are deleted (a driver that died before assembling them) and a rerun rebuilds the same tables
    from what is left, labelling only the missing tasks."""
    fs, options = s3
    args, expected = RELEASE["webshop-random-adaptive"]
    uri = f"s3://hpl/runs/ws?{options}"
    p = gen(uri, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    copy_tables(fs, "hpl/runs/ws", tmp_path / "first")
    assert table_digests(tmp_path / "first") == expected
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert manifest["finished"] and manifest["config"]["out"] == uri
    assert all(not i.base_name.startswith(".") or i.base_name == ".shards"
               for i in fs.get_file_info(pafs.FileSelector("hpl/runs/ws", recursive=True)))

    for name in ("step_pairs", "group_pairs"):
        fs.delete_file(f"hpl/runs/ws/{name}.parquet")
    def mc_shards() -> dict[str, object]:
        return {i.path: i.mtime for i in fs.get_file_info(pafs.FileSelector("hpl/runs/ws/.shards", recursive=True))
                if i.type == pafs.FileType.File and "/mc_" in i.path}

    before = mc_shards()
    lost = sorted(before)[:2]
    for path in lost:
        fs.delete_file(path)
    p = gen(uri, *args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "reusing s3://hpl/runs/ws/trajectories_policy.parquet" in p.stderr
    after = mc_shards()
    assert set(after) == set(before) and len(before) == 4  # one shard a task
    assert all(after[k] == before[k] for k in before if k not in lost)  # the others were not rewritten
    copy_tables(fs, "hpl/runs/ws", tmp_path / "resumed")
    assert table_digests(tmp_path / "resumed") == expected


def test_bad_out_uri_is_one_line(cli_error):
    from hpl_data import cli_gen

    message = cli_error(cli_gen, ["--env", "webshop", "--limit", "1", "--out", "nosuchscheme://bucket/x"])
    assert "--out" in message and "nosuchscheme" in message


@pytest.mark.parametrize("where", ["file", "s3"])
def test_mc_reads_the_expert_table_from_the_shared_output(where, s3, tmp_path):
    """MC labelling with a file/teacher expert replays ``trajectories_expert.parquet`` from ``--out``."""
    from hpl_data.experts import load_expert_file

    _, options = s3
    out = Output(f"file://{tmp_path}" if where == "file" else f"s3://hpl/experts-{os.getpid()}?{options}")
    rows = [{"task_id": "7", "error": None, "actions": ["search[x]", "click[y]"],
             "messages": [{"role": "user", "content": "i"}, {"role": "assistant", "content": "Thought: a\nAction: search[x]"},
                          {"role": "user", "content": "o"}, {"role": "assistant", "content": "Action: click[y]"}]}]
    out.write_table("trajectories_expert.parquet", pa.Table.from_pylist(rows))
    recorded = load_expert_file(out.uri("trajectories_expert.parquet"))
    assert recorded == {"7": [("a", "search[x]"), ("", "click[y]")]}
