"""`hpl-data view` in a real browser (Debian's chromium driven by Playwright) and the protocol
fingerprint on hpl-gen / hpl-eval outputs, on real runs of the built-in agents."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
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


# Text that breaks naive embedding: ends a <script>, opens an HTML comment, names a template
# placeholder, looks like a JS template substitution, ends a JS line (U+2028), and is markup.
HOSTILE = "<!--</script>{{DATA}}${x}\u2028<b>&amp;</b>{{TITLE}}"
HOSTILE_NAME = HOSTILE.replace("/", "")  # a file name cannot hold "/"


def _hostile_copy(runs: Path, tmp: Path) -> tuple[Path, Path]:
    """The fixture's hpl-gen folder and one hpl-eval run, with every string field the page shows
    (task ids and types, buckets, agents, policy specs, folder and file names) made hostile."""
    gen = tmp / f"gen{HOSTILE_NAME}"
    shutil.copytree(runs / "gen", gen)
    manifest = json.loads((gen / "manifest.json").read_text())
    manifest["config"]["policy"] = manifest["config"]["expert"] = HOSTILE
    (gen / "manifest.json").write_text(json.dumps(manifest))
    for table_path in gen.glob("*.parquet"):
        table = pq.read_table(table_path)
        for name in ("task_id", "task_type", "bucket", "agent"):
            if name in table.column_names:
                column = [HOSTILE + str(v) for v in table.column(name).to_pylist()]
                table = table.set_column(table.column_names.index(name), name, pa.array(column))
        pq.write_table(table, table_path)
    summary = json.loads((runs / "plain.json").read_text())
    summary["agent"] = HOSTILE
    for run_ in summary.get("runs", [summary]):
        run_["agent"] = HOSTILE
    shutil.copy(runs / summary["trajectories"], tmp / summary["trajectories"])
    eval_json = tmp / f"eval{HOSTILE_NAME}.json"
    eval_json.write_text(json.dumps(summary))
    return gen, eval_json


def test_report_with_hostile_strings(runs, tmp_path):
    """Every embedded string and the title/folder names carry HOSTILE: the page still renders,
    runs only its own script, and shows the strings as text."""
    from playwright.sync_api import sync_playwright

    from hpl_data.view import write_report

    gen, eval_json = _hostile_copy(runs, tmp_path)
    report = write_report([gen, eval_json], tmp_path / f"report{HOSTILE_NAME}.html", title=HOSTILE)
    text = report.read_text(encoding="utf-8")
    assert text.count("</script>") == text.count("<script")  # the data closed no element early
    assert "<!--" not in text and "\u2028" not in text.split("<script", 1)[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_selector("html[data-rendered]")
            assert page.text_content("head title") == page.text_content("#title") == HOSTILE
            overview = page.text_content("#tab-overview")
            assert f"gen{HOSTILE_NAME}" in overview and f"policy {HOSTILE}" in overview
            assert f"eval{HOSTILE_NAME}" in overview
            page.click("#tabs button[data-tab=pairs]")
            cells = page.locator("#pair-table tbody tr:first-child td")
            assert cells.nth(2).text_content().startswith(HOSTILE) and cells.nth(3).text_content().startswith(HOSTILE)
            assert any(o.startswith(HOSTILE) for o in page.locator("#pf-bucket option").all_text_contents())
            page.click("#pair-table tbody tr:first-child")
            page.wait_for_selector("#pair-detail .sides")
            assert f"task {HOSTILE}" in page.text_content("#pair-detail h2")
            page.click("#tabs button[data-tab=episodes]")
            assert page.locator("#episode-table tbody tr:first-child td").nth(2).text_content().startswith(HOSTILE)
            page.click("#tabs button[data-tab=eval]")
            assert HOSTILE in page.text_content(".eval-table tbody") and f"eval{HOSTILE_NAME}" in page.text_content("#tab-eval")
            assert page.evaluate("window.x") is None and page.locator("script").count() == text.count("<script")
            assert not errors, errors
        finally:
            browser.close()


def test_serve_only_the_report(tmp_path):
    """--serve answers the report (at / and at its name) and 404 to anything else in its folder:
    no listing, no other file, no way out through '..'."""
    import threading
    import urllib.error
    import urllib.request

    from hpl_data.view.report import make_server, report_url

    (tmp_path / "report.html").write_text("<p>the report</p>")
    (tmp_path / "secret.txt").write_text("not for the browser")
    (tmp_path / "sub").mkdir()
    httpd = make_server(tmp_path / "report.html")
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert report_url(httpd) == base + "/report.html"
        for path in ("/report.html", "/", "/report.html?x=1"):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                assert r.status == 200 and r.read() == b"<p>the report</p>", path
        for path in ("/secret.txt", "/sub/", "/sub", "/../report.html/x", "/%2e%2e/secret.txt", "//secret.txt",
                     "/report.html/", "/index.html"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + path, timeout=10)
            assert e.value.code == 404, path
            assert b"secret" not in e.value.read()
    finally:
        httpd.shutdown()
        httpd.server_close()
