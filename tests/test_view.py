"""`hpl-data view` in a real browser (Debian's chromium driven by Playwright) and the protocol
fingerprint on hpl-gen / hpl-eval outputs, on real runs of the built-in agents."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hpl_data.parquet import read_metadata, read_protocol
from hpl_data.protocol import differences

SCREENSHOT_DIR = Path(os.environ.get("HPL_VIEW_SCREENSHOTS", ""))  # set to keep the screenshots


def run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One hpl-gen folder and two hpl-eval runs that differ only in fix_option_normalisation."""
    tmp = tmp_path_factory.mktemp("view")
    gen = run("hpl_data.cli_gen", "--env", "webshop", "--expert", "oracle", "--policy", "heuristic", "--limit", "4",
              "--mc-rollouts", "2", "--out", str(tmp / "gen"))
    assert gen.returncode == 0, gen.stderr
    for name, extra in (("plain", []), ("fixed", ["--env-arg", "fix_option_normalisation=true"])):
        p = run("hpl_data.cli_eval", "--env", "webshop", "--agent", "oracle", "--limit", "3", "--workers", "1",
                "--quiet", "--out", str(tmp / f"{name}.json"), *extra)
        assert p.returncode == 0, p.stderr
    return tmp


def test_protocol_on_every_output(runs):
    manifest = json.loads((runs / "gen" / "manifest.json").read_text())
    proto = manifest["protocol"]
    parts = proto["parts"]
    assert parts["env"] == "webshop" and parts["split"] == "train" and parts["task_count"] == 4
    assert parts["max_turns"] == 10 and parts["spacy_pipeline"] and parts["data_files"]["catalog_sources_sha256"]
    assert parts["reward_options"] == {"fix_option_normalisation": False}
    for table in (runs / "gen").glob("*.parquet"):
        assert read_protocol(table) == proto, table.name
    summary = json.loads((runs / "plain.json").read_text())
    assert read_protocol(runs / summary["trajectories"]) == summary["protocol"]
    assert read_metadata(runs / summary["trajectories"])["protocol"]["hash"] == summary["protocol"]["hash"]


def test_compare_names_the_differing_part(runs):
    a, b = (json.loads((runs / f"{n}.json").read_text())["protocol"] for n in ("plain", "fixed"))
    assert a["hash"] != b["hash"]
    assert differences(a, b) == [("reward_options.fix_option_normalisation", False, True)]
    refused = run("hpl_data.cli_eval", "compare", str(runs / "plain.json"), str(runs / "fixed.json"))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--allow-protocol-mismatch" in refused.stderr and "fix_option_normalisation: False vs True" in refused.stderr
    p = run("hpl_data.cli_eval", "compare", str(runs / "plain.json"), str(runs / "fixed.json"),
            "--allow-protocol-mismatch")
    assert p.returncode == 0, p.stderr
    assert "protocol differs for webshop/test" in p.stdout
    assert "reward_options.fix_option_normalisation: False vs True" in p.stdout
    same = run("hpl_data.cli_eval", "compare", str(runs / "plain.json"), str(runs / "plain.json"))
    assert "protocol differs" not in same.stdout


def chromium_path() -> str:
    path = os.environ.get("HPL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("no chromium binary: install Debian's chromium (make system-deps) or set HPL_CHROMIUM")
    return path


def test_report_in_headless_chromium(runs, tmp_path):
    from playwright.sync_api import sync_playwright

    report = tmp_path / "report.html"
    p = run("hpl_data.cli_data", "view", str(runs / "gen"), str(runs / "plain.json"), str(runs / "fixed.json"),
            "--out", str(report))
    assert p.returncode == 0, p.stderr
    tables = {t: pq.read_table(runs / "gen" / f"{t}.parquet") for t in ("traj_pairs", "step_pairs", "group_pairs")}
    total = sum(t.num_rows for t in tables.values())
    deltas = [d for t in tables.values() for d in t.column("delta_r").to_pylist()]
    cut = sorted(deltas)[len(deltas) // 2]
    episodes = sum(pq.read_metadata(f).num_rows for f in (runs / "gen").glob("trajectories_*.parquet")) + 6
    assert total > 0 and tables["traj_pairs"].num_rows > 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_selector("html[data-rendered]")
            assert "fix_option_normalisation" in page.text_content(".protocol-mismatch")
            page.click("#tabs button[data-tab=pairs]")
            count = lambda: int(page.text_content("#pair-count").replace(",", ""))  # noqa: E731
            assert count() == total
            assert page.locator("#pair-table tbody tr").count() == min(total, 50)
            page.select_option("#pf-level", label="traj")
            assert count() == tables["traj_pairs"].num_rows
            page.select_option("#pf-level", label="all")
            page.fill("#pf-min", str(cut))
            assert count() == sum(round(d, 4) >= cut for d in deltas) < total
            page.fill("#pf-min", "")
            page.select_option("#pf-level", label="group")
            page.click("#pair-table tbody tr:first-child")
            page.wait_for_selector("#pair-detail .sides")
            detail = page.text_content("#pair-detail")
            assert "branch point: expert step" in detail and "shared prefix" in detail and "rollouts:" in detail
            if SCREENSHOT_DIR.name:
                page.screenshot(path=str(SCREENSHOT_DIR / "view_pairs.png"))
            shot = page.screenshot(path=str(tmp_path / "pairs.png"))
            assert len(shot) > 10_000
            page.click("#tabs button[data-tab=episodes]")
            assert int(page.text_content("#episode-count")) == episodes
            page.select_option("#ef-role", label="eval")
            assert int(page.text_content("#episode-count")) == 6
            page.click("#episode-table tbody tr:first-child")
            page.wait_for_selector("#episode-detail table.turns")
            page.click("#tabs button[data-tab=eval]")
            rows = page.locator(".eval-table tbody tr")
            assert rows.count() == 2 and "100.0" in rows.first.text_content()
            assert "≠" in page.text_content("#tab-eval")
            assert not errors, errors
        finally:
            browser.close()


def test_view_bad_input(tmp_path):
    p = run("hpl_data.cli_data", "view", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html"))
    assert p.returncode == 2 and "no such file or folder" in p.stdout
    (tmp_path / "broken.json").write_text("{not json")
    p = run("hpl_data.cli_data", "view", str(tmp_path / "broken.json"), "--out", str(tmp_path / "r.html"))
    assert p.returncode == 2 and "not a readable hpl-eval JSON" in p.stdout
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("env_name,split,keys", [
    ("alfworld", "valid_seen", {"alfworld_version", "textworld_version"}),
    ("intercode-sql", "test", {"sql_server", "reward_options"}),
])
def test_env_protocol_parts(env_name, split, keys):
    from hpl_data.protocol import compute
    from hpl_envs import make_env

    ids = make_env(env_name).task_ids(split)[:2]
    proto = compute(env_name, {}, split, ids)
    assert keys <= set(proto["parts"]) and proto["parts"]["task_count"] == 2 and proto["parts"]["data_files"]
    if env_name == "intercode-sql":
        assert proto["parts"]["sql_server"]["version"][:1].isdigit()
        other = compute(env_name, {"kendall_tau": False}, split, ids)
        assert [d[0] for d in differences(proto, other)] == ["reward_options.kendall_tau"]
    else:
        assert compute(env_name, {}, split, ids)["hash"] == proto["hash"]  # deterministic
