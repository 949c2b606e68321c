"""SIGTERM (preemption) and SIGINT (Ctrl-C), sent to the process or to its whole process group at
random (seeded) moments of ``hpl-gen`` with an agent policy, ``hpl-gen`` with an LLM policy (the
tiny model on the session's shared vLLM server) and ``hpl-eval``: one line on stderr and
no traceback (the env workers' included), exit status 143 / 130, no process of the command left
running, the finished shards kept, and rerunning the command resumes to the tables of an
undisturbed run."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
psutil = pytest.importorskip("psutil")

from test_gen import table_digests  # noqa: E402

EXIT = {signal.SIGTERM: (143, "terminated (SIGTERM)"), signal.SIGINT: (130, "interrupted (SIGINT)")}
NOISE = re.compile(r"Traceback|Error|Exception|exception|Warning|never retrieved|destroyed|Broken", re.IGNORECASE)


def commands(url: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (module, arguments)."""
    gen = ["--no-progress", "--env", "webshop", "--workers", "2", "--mc-rollouts", "2"]
    return {
        "gen-agent": ("hpl_data.cli_gen", [*gen, "--limit", "6", "--seed", "3"]),
        "gen-llm": ("hpl_data.cli_gen", [*gen, "--limit", "3", "--policy", f"openai:{url}", "--policy-max-tokens",
                                         "16", "--max-turns", "4"]),
        "eval": ("hpl_data.cli_eval", ["--env", "webshop", "--agent", f"openai:{url}", "--limit", "12", "--max-turns",
                                       "6", "--max-tokens", "16", "--workers", "2", "--quiet"]),
    }


# SIGINT as a terminal gives it: a shell starts background jobs (a CI script's, a nohup'd suite) with
# SIGINT ignored, which children inherit and Python then keeps; the command must see Ctrl-C as a user would
LAUNCH = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "sys.argv[0] = sys.argv[1]; del sys.argv[1]; runpy.run_module(sys.argv[0], run_name='__main__')")


def start(module: str, args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, module, *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_workers(p: subprocess.Popen) -> tuple[dict, float]:
    """The command's processes once its workers run, and the moment they were first seen."""
    seen = {}
    while p.poll() is None and not seen:
        seen = {c.pid: c for c in descendants(p)}
        time.sleep(0.05)
    return seen, time.monotonic()


def timed_run(module: str, args: list[str], out: Path) -> float:
    """Runs a command undisturbed; the seconds it worked after its workers started."""
    p = start(module, args, out)
    _, at_work = wait_for_workers(p)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    return time.monotonic() - at_work


def descendants(proc: subprocess.Popen) -> list:
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def alive(procs: list) -> list[int]:
    def running(p) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 5
    while (left := [p.pid for p in procs if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def shards(out: Path) -> set[Path]:
    return set(out.glob(".shards/*/*.json"))


def finished(out: Path) -> bool:
    """The command's work is complete (a signal after this meets the interpreter's exit, not hpl)."""
    if out.suffix == ".json":
        return out.exists()
    return (out / "manifest.json").exists() and '"finished": true' in (out / "manifest.json").read_text()


SIGNAL_CASES = list(itertools.product((signal.SIGTERM, signal.SIGINT), ("process", "group")))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gen-agent", "gen-llm", "eval"])
def test_sigterm_and_sigint_at_random_moments(request, tmp_path, name):
    """Each of a command's 4 cases (signal x target; 12 over the three commands, which run as
    separate cases so both xdist workers share them) is delivered while the command works, each in
    a fresh output folder: the signal moment is drawn from the command's own measured working time
    (a timed undisturbed run), and a run that finishes before its moment shortens the span of the
    next attempt to what that run took. The ``hpl-gen`` commands' interrupted folder that kept the
    most shards is then resumed to the undisturbed tables. Only the LLM commands ask for the
    session's vLLM server (an xdist worker that runs none starts none for the agent command)."""
    url = request.getfixturevalue("vllm_server").url if name != "gen-agent" else "unused"
    module, args = commands(url)[name]
    out = tmp_path / "reference" / ("summary.json" if name == "eval" else "")
    span = timed_run(module, args, out)
    reference = table_digests(out) if name != "eval" else None

    rng = random.Random(f"24-{name}")
    cases = SIGNAL_CASES.copy()
    rng.shuffle(cases)
    delivered, interrupted = [], None
    for index, (signum, target) in enumerate(cases):
        for attempt in range(4):
            folder = tmp_path / f"{name}-{index}-{attempt}"
            out = folder / ("summary.json" if name == "eval" else "")
            p = start(module, args, out)
            seen, at_work = wait_for_workers(p)
            wait_until = at_work + rng.uniform(0.05, 0.8) * span
            while p.poll() is None and time.monotonic() < wait_until:
                seen.update({c.pid: c for c in descendants(p)})
                time.sleep(0.02)
            if p.poll() is None:
                (os.killpg if target == "group" else os.kill)(p.pid, signum)
            _, err = p.communicate(timeout=120)
            lines = err.strip().splitlines()
            if finished(out):  # it finished first: a gen folder is compared, and the case tried again
                span = min(span, time.monotonic() - at_work)
                if reference is not None:
                    assert table_digests(out) == reference, err[-3000:]
                continue
            status, words = EXIT[signum]
            case = f"{name} {signum.name} to the {target}"
            assert p.returncode == status, (case, err[-3000:])
            assert lines[-1] == f"hpl-{name.split('-')[0]}: {words}", (case, err[-3000:])
            assert not [line for line in lines if NOISE.search(line)], (case, err[-3000:])
            assert alive(list(seen.values())) == [], (case, err[-3000:])
            assert not list(folder.rglob("*.tmp")), case  # every shard written whole
            if reference is not None and len(shards(out)) >= len(shards(interrupted or folder)):
                interrupted = out  # the one that kept most
            delivered.append(case)
            break
    assert len(delivered) == len(cases) == 4, delivered

    if reference is None:
        return
    assert interrupted is not None  # an interrupted folder resumes to the undisturbed tables
    kept = shards(interrupted)
    p = start(module, args, interrupted)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert table_digests(interrupted) == reference and kept <= shards(interrupted)
