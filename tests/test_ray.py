"""hpl-gen / hpl-eval with env workers as Ray actors on a real multi-node Ray cluster (head + two
worker nodes, each its own raylet, all on 127.0.0.1): the same tables and summaries as the local
run, also when a worker node is lost mid-run; --ray without Ray installed says how to install it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_gen import table_digests

# Ray resolves 127.0.0.1 to this machine's outward address unless multi-node clusters are
# "unsupported" here: this keeps the GCS, raylets and driver on the loopback interface.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
NODE = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20, "include_dashboard": False}
# A lost node is declared dead after ~1.5 s without health checks (Ray's default is ~15 s).
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
                "health_check_failure_threshold": 3}
WORKERS = ["--workers", "2"]  # one actor (1 CPU) per node; both fit on one node after the other is lost


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    for attempt in range(3):  # a raylet that misses Ray's fixed 30 s start deadline (a loaded machine): again
        c = Cluster()
        try:
            c.add_node(**NODE, num_cpus=0, _system_config=FAST_FAILURE)
            workers = [c.add_node(**NODE, num_cpus=2) for _ in range(2)]
            break
        except Exception:
            c.shutdown()
            if attempt == 2:
                raise
    pids = [p.process.pid for n in [c.head_node, *workers] for ps in n.all_processes.values() for p in ps]
    try:
        yield c, workers
    finally:
        c.shutdown()
        deadline = time.time() + 20
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.5)
        assert not [p for p in pids if _alive(p)], "Ray processes left behind"


def eval_args(out: Path) -> list[str]:
    return ["--env", "webshop", "--agent", "heuristic", "--split", "test", "--limit", "24", "--quiet", "--out",
            str(out)]


@pytest.mark.slow
def test_hpl_eval_on_ray_equals_local(cluster, tmp_path):
    c, _ = cluster
    runs = [subprocess.Popen([sys.executable, "-m", "hpl_data.cli_eval", *eval_args(tmp_path / f"{name}.json"), *extra],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name, extra in (("local", ["--workers", "2"]), ("ray", [*WORKERS, "--ray", c.address]))]
    for p in runs:  # side by side: most of each run is loading the env, in the driver and in 2 workers
        _, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "ray"))
    for key in ("episodes", "avg_reward", "success_rate", "avg_steps", "by_task_type", "per_episode", "protocol"):
        assert a[key] == b[key], key
    assert b["config"]["ray"] == c.address and b["counters"]["resets"] == 24 and b["failed_episodes"] == 0


@pytest.mark.slow
def test_hpl_gen_on_ray_equals_local_with_a_node_lost_mid_run(cluster, tmp_path, monkeypatch):
    """hpl-gen on two nodes; once MC labelling is under way on both (every policy step waits at a gate,
    tests/gated_agent.py), one worker node is lost as a machine is (its raylet and every process it
    started SIGKILLed): its actors' tasks are redone elsewhere, the lost workers are counted, and the
    tables equal those of the same run on local workers without any failure."""
    c, nodes = cluster
    args = ["--env", "webshop", "--limit", "6", "--concurrency", "4", "--policy", "tests.gated_agent:make", *WORKERS]
    local = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", *args, "--out",
                            str(tmp_path / "local")], capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-3000:]
    out, gate = tmp_path / "gen", tmp_path / "gate"
    monkeypatch.setenv("HPL_TEST_GEN_OUT", str(out))
    monkeypatch.setenv("HPL_TEST_GATE", str(gate))
    proc = subprocess.Popen([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", *args, "--ray",
                             c.address, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = nodes[1]
    raylet = victim.all_processes["raylet"][0].process
    try:
        deadline = time.time() + 300
        while not Path(f"{gate}.waiting").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1)  # every worker has reached the gate with MC work in hand
        for p in [*psutil.Process(raylet.pid).children(recursive=True), psutil.Process(raylet.pid)]:
            p.send_signal(signal.SIGKILL)
        gate.touch()
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        c.remove_node(victim, allow_graceful=False)  # reap what is left of the node
    assert proc.returncode == 0, stderr[-3000:]
    assert table_digests(out) == table_digests(tmp_path / "local")
    counters = json.loads((out / "manifest.json").read_text())["counters"]
    assert counters["mc_failed_tasks"] == 0
    assert counters["mc_worker_restarts"] >= 1, counters  # the lost actors, restarted on the live node
    assert counters.get("mc_task_retries", 0) >= 1, counters


def test_ray_flag_without_ray_installed(tmp_path):
    """Simulated by blocking the import: one line with the install hint, exit 2, nothing written."""
    code = ("import sys; sys.modules['ray'] = None; from hpl_data.{m} import main; "
            "sys.exit(main({argv!r}))")
    for module, argv in (("cli_gen", ["--env", "webshop", "--limit", "1", "--ray", "--out", str(tmp_path / "g")]),
                         ("cli_eval", ["--env", "webshop", "--agent", "heuristic", "--limit", "1", "--ray",
                                       "127.0.0.1:6379"])):
        p = subprocess.run([sys.executable, "-c", code.format(m=module, argv=argv)], capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().count("\n") == 0 and "pip install 'hpl[ray]'" in p.stderr, p.stderr
    assert not (tmp_path / "g").exists()


def test_ray_address_nobody_answers_at_is_a_one_line_error_in_seconds(tmp_path):
    """ray.init keeps retrying such an address for minutes; hpl says so before any work."""
    from hpl_data.policies.vllm_server import free_port

    for argv in (["-m", "hpl_data.cli_eval", "--env", "webshop", "--agent", "heuristic", "--limit", "1"],
                 ["-m", "hpl_data.cli_gen", "--env", "webshop", "--limit", "1", "--out", str(tmp_path / "g")]):
        t0 = time.time()
        p = subprocess.run([sys.executable, *argv, "--ray", f"127.0.0.1:{free_port()}"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr[-2000:]
        assert "no Ray cluster answers there" in p.stderr and time.time() - t0 < 60
    assert not (tmp_path / "g").exists()
