"""Bad input to the command-line tools: every case ends with exit status 2 and one line on stderr
(``hpl-xxx: what is wrong, how to fix it``), before any work, and never a traceback. The CLIs
run in-process here (the boundary is what is tested); a few cases also run as subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hpl_data import cli_data, cli_eval, cli_gen
from hpl_data.cli_common import max_workers
from hpl_train import cli as cli_train

EVAL = ["--env", "webshop", "--agent", "heuristic", "--split", "test"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "a_file").write_text("x")
    (root / "dir.json").mkdir()
    (root / "self.yaml").write_text("base: self.yaml\n")
    (root / "notjson.txt").write_bytes(b"\x00\xff\xfe binary")
    return root


def cases(p):
    f, d = p / "a_file", p / "dir.json"
    return [
        (cli_eval, [*EVAL, "--limit", "-1"], "--limit: must be >= 1"),
        (cli_eval, [*EVAL, "--limit", "0"], "--limit: must be >= 1"),
        (cli_eval, [*EVAL, "--limit", "abc"], "expected a whole number"),
        (cli_eval, [*EVAL, "--workers", "0"], "--workers: must be >= 1"),
        (cli_eval, [*EVAL, "--workers", str(max_workers() + 1)], "more than this machine can use"),
        (cli_eval, [*EVAL, "--concurrency", "0"], "--concurrency: must be >= 1"),
        (cli_eval, [*EVAL, "--concurrency", "1000000"], "at most 4096 episodes"),
        (cli_eval, [*EVAL, "--max-turns", "0"], "--max-turns: must be >= 1"),
        (cli_eval, [*EVAL, "--episode-timeout", "-5"], "must be a number of seconds > 0"),
        (cli_eval, [*EVAL, "--episode-timeout", "nan"], "must be a number of seconds > 0"),
        (cli_eval, [*EVAL, "--limit", "0", "--quiet"], "--limit: must be >= 1"),
        (cli_eval, [*EVAL, "--out", str(f / "r.json")], "is a file, so nothing can be created under it"),
        (cli_eval, [*EVAL, "--out", str(d)], "is a directory; name a file"),
        (cli_eval, [*EVAL, "--out", str(f)], "is an existing file, and a directory is written there"),
        (cli_eval, ["--env", "webshop", "--agent", "hf:/no/such/model"], "no such model folder"),
        (cli_eval, ["--env", "webshop", "--agent", "vllm:./no-such-model"], "no such model folder"),
        (cli_eval, ["--env", "webshop", "--agent", "file:" + str(p / "missing.json")], "missing.json"),
        (cli_eval, ["--env", "nope", "--agent", "heuristic"], "nope"),
        (cli_eval, [*EVAL[:4], "--split", "nope"], "unknown split 'nope'"),
        (cli_eval, [*EVAL, "--env-arg", "no_such_option=1"], "check --env-arg"),
        (cli_eval, [*EVAL, "--env-arg", "novalue"], "expects KEY=VALUE"),
        (cli_eval, ["--env", "webshop", "--agent", "genius"], "unknown policy spec"),
        (cli_eval, ["--env", "webshop"], "the following arguments are required: --agent"),
        (cli_eval, ["--env", "webshop", "--agent", "openai:http://127.0.0.1:9/v1#m", "--policy-arg", "bogus=1",
                    "--limit", "1"], "check --policy-arg"),
        (cli_gen, ["--env", "webshop", "--out", str(p / "g"), "--limit", "0"], "--limit: must be >= 1"),
        (cli_gen, ["--env", "webshop", "--out", str(p / "g"), "--workers", "0"], "--workers: must be >= 1"),
        (cli_gen, ["--env", "webshop", "--out", str(p / "g"), "--workers", "1000"], "more than this machine"),
        (cli_gen, ["--env", "webshop", "--out", str(f)], "is an existing file"),
        (cli_gen, ["--env", "webshop", "--out", str(f / "g")], "is a file, so nothing can be created"),
        (cli_gen, ["--env", "webshop", "--out", str(p / "g"), "--env-arg", "no_such_option=1"],
         "env webshop: got an unexpected keyword argument 'no_such_option'; it takes catalog, goals"),
        (cli_gen, ["--env", "webshop", "--out", str(p / "g"), "--policy", "openai:http://127.0.0.1:9/v1#m",
                   "--policy-arg", "bogus=1"], "openai policy: got an unexpected keyword argument 'bogus'"),
        (cli_train, ["--model", "m", "--data", "d", "lr=abc"], "lr must be a number, got 'abc'"),
        (cli_train, ["--model", "m", "--data", "d", "batch_size=abc"], "batch_size must be a whole number"),
        (cli_train, ["--model", "m", "--data", "d", "packing=maybe"], "packing must be true or false"),
        (cli_train, ["--model", "m", "--data", "d", "length_thresholds=[0,4,2]"], "three numbers t0 <= t1 <= t2"),
        (cli_train, ["--model", "m", "--data", "d", "delta_thresholds=[0.4,0.7]"], "three numbers d0 >= d1 >= d2"),
        (cli_train, ["--config", str(p / "self.yaml"), "--model", "m", "--data", "d"], "comes back to itself"),
        (cli_train, ["--config", str(p / "notjson.txt"), "--model", "m", "--data", "d"], "cannot read"),
        (cli_train, ["--model", "m", "--data", "d", "--output-dir", str(f / "o")], "is a file"),
        (cli_train, ["--model", "m", "--data", str(p / "missing")], "no such file or directory"),
        (cli_data, ["download", "nope"], "invalid choice"),
    ]


def test_bad_input_table(paths, capsys):
    failures = []
    for cli, argv, expected in cases(paths):
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        prog = {cli_eval: "hpl-eval", cli_gen: "hpl-gen", cli_train: "hpl-train", cli_data: "hpl-data"}[cli]
        if not (rc == 2 and len(lines) == 1 and lines[0].startswith(prog + ": ") and expected in lines[0]):
            failures.append(f"{prog} {' '.join(argv)} -> rc {rc}, stderr {err!r}")
    assert not failures, "\n".join(failures)
    assert not (paths / "g").exists()  # nothing was started


@pytest.mark.parametrize("breakage,expected", [
    ("dir", "is a directory, not a JSON file"),
    ("array", "got a JSON list"),
    ("binary", "not UTF-8 text"),
    ("int_asin", "asin 123 is not a string"),
])
def test_broken_webshop_sources_name_the_file(tmp_path, capsys, monkeypatch, breakage, expected):
    from conftest import DATA

    web = tmp_path / "webshop"
    web.mkdir()
    goals, products = web / "items_ins_v2_1000.json", web / "items_shuffle_1000.documents.jsonl"
    lines = (DATA / "webshop" / products.name).read_text().splitlines()[:3]
    products.write_text("\n".join(lines) + "\n")
    shutil.copy(DATA / "webshop" / goals.name, goals)
    if breakage == "dir":
        goals.unlink()
        goals.mkdir()
    elif breakage == "array":
        goals.write_text("[]")
    elif breakage == "binary":
        goals.write_bytes(bytes(range(256)))
    else:
        products.write_text(lines[0].replace('"asin": "', '"asin": 123, "x": "', 1) + "\n")
    monkeypatch.setenv("HPL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HPL_CACHE_DIR", str(tmp_path / "cache"))
    assert cli_eval.main([*EVAL, "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and str(web) in err, err


def test_as_a_user_runs_it_quiet_and_debug(tmp_path):
    """Subprocesses: --quiet still shows the error; --debug shows the traceback."""
    base = [sys.executable, "-m", "hpl_data.cli_eval", *EVAL, "--limit", "0"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([*base, "--quiet"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "hpl-eval: argument --limit: must be >= 1, got 0 (see hpl-eval --help)"]
    p = subprocess.run([*base, "--debug"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode != 0 and "Traceback" in p.stderr and "CliError" in p.stderr


def test_a_bug_is_one_line_pointing_to_debug(capsys, monkeypatch):
    def broken(args, runs, console):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli_eval, "run_all", broken)
    assert cli_eval.main([*EVAL, "--limit", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (ZeroDivisionError" in err and "--debug" in err


def test_a_type_error_is_a_bug_not_bad_input(capsys, monkeypatch):
    """Only typed configuration errors are 'bad input' (exit 2); a TypeError from inside the run is
    a bug (exit 1, 'internal error'), whatever CLI it surfaces in."""
    from hpl_data.gen import Generation

    def broken(self):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(Generation, "run", broken)
    assert cli_gen.main(["--env", "webshop", "--out", "/tmp/never-written", "--limit", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hpl-gen: internal error (TypeError" in err and "--debug" in err

    def plan_bug(args):
        raise TypeError("'NoneType' object is not subscriptable")

    monkeypatch.setattr(cli_eval, "plan_runs", plan_bug)
    assert cli_eval.main([*EVAL, "--limit", "1"]) == 1
    assert "hpl-eval: internal error (TypeError" in capsys.readouterr().err


def test_only_a_failed_worker_start_is_an_expected_runtime_error(capsys, monkeypatch):
    """hpl-eval: env workers that cannot start are one line and exit 2; a RuntimeError while the
    episodes run is a bug (exit 1), no longer reported as bad input."""
    from hpl_data.engine import RolloutEngine

    async def no_start(self):
        raise RuntimeError("env worker 0 for webshop did not start: connection refused")

    monkeypatch.setattr(RolloutEngine, "start", no_start)
    assert cli_eval.main([*EVAL, "--limit", "1", "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "hpl-eval: env worker 0 for webshop did not start: connection refused"]
    monkeypatch.undo()

    async def run_bug(engine, ids, title, console, quiet):
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(cli_eval, "_with_progress", run_bug)
    assert cli_eval.main([*EVAL, "--limit", "1", "--workers", "1"]) == 1
    assert "hpl-eval: internal error (RuntimeError: dictionary changed size" in capsys.readouterr().err
