"""The docs keep working: runnable code blocks run, every `hpl-*` flag they name exists, the README is a
landing page whose links resolve, and the site builds strictly and renders in Chromium.

A code block runs when the line before its fence is ``<!-- test -->``: python blocks in-process,
bash blocks with ``bash -e``, each page's blocks in order in one temporary folder (a later block may
read an earlier one's output). Blocks too long for the suite are not marked; their ``hpl-*``
command lines are still parsed and every ``--flag`` checked against the CLI's own parser, and every
``key=value`` of ``hpl-train`` against ``TrainConfig``, so a renamed flag fails here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
sys.path.insert(0, str(DOCS / "scripts"))
import docgen  # noqa: E402

MARKER = "<!-- test -->"
FENCE = re.compile(r"^(\s*)(`{3,})\s*([\w+-]*)")


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marked: bool

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def markdown_files() -> list[Path]:
    files = sorted(p for p in DOCS.rglob("*.md") if "scripts" not in p.parts)
    return [REPO / "README.md", REPO / "datasets" / "README.md", REPO / "docker" / "README.md", *files]


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(ticks):
            end += 1
        body = "\n".join(line[len(indent):] for line in lines[i + 1:end])
        marked = i > 0 and lines[i - 1].strip() == MARKER
        blocks.append(Block(path, i + 1, lang, body, marked))
        i = end + 1
    return blocks


def env_docstring_blocks() -> list[Block]:
    """The ``Arguments`` examples in the env docstrings (their pages are generated from them)."""
    out = []
    for name in docgen.env_names():
        cls, doc = docgen.class_docstring(name)
        source = REPO / (docgen.profile_entry(name).split(":")[0].replace(".", "/") + ".py")
        out += [dataclasses.replace(b, path=source) for b in code_blocks(source, doc)]
    return out


def all_blocks() -> list[Block]:
    return [b for p in markdown_files() for b in code_blocks(p)] + env_docstring_blocks()


# ---- flags named anywhere in the docs exist -------------------------------------------------------------

def command_lines(code: str) -> list[list[str]]:
    """Shell words of each simple command in a block (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in a YAML/Slurm line: not a command we check
            continue
        current: list[str] = []
        for w in words:
            if w in ("|", "||", "&&", ";", "&", "do", "then"):
                commands.append(current)
                current = []
            else:
                current.append(w.rstrip(";"))
        commands.append(current)
    return [c for c in commands if c]


def hpl_invocation(words: list[str]) -> list[str] | None:
    """The words from the hpl command on (``accelerate launch ... -m hpl_train`` counts as hpl-train)."""
    words = [w.split("=", 1)[1] if re.match(r"^[A-Z_]+=", w) else w for w in words]  # VAR=x cmd
    for i, w in enumerate(words):
        if w.startswith("hpl-") and w in {c.command.split()[0] for c in docgen.CLIS}:
            return words[i:]
        if w == "-m" and i + 1 < len(words) and words[i + 1] == "hpl_train":
            return ["hpl-train", *words[i + 2:]]
    return None


def train_config_problem(words: list[str]) -> str | None:
    """Why ``hpl-train``'s ``--config`` and ``key=value`` words would not load (None: they load)."""
    from hpl_train.config import CONFIG_DIR, load_config

    args, _ = docgen.parse_known(words)
    config = args.config if args.config and (CONFIG_DIR / f"{args.config}.yaml").exists() else None
    overrides = [w for w in args.overrides if "=" in w and w != "key=value"]
    try:
        load_config(config, overrides, model="m", data=["d"], output_dir="o")
    except ValueError as e:
        return str(e)
    return None


def unknown_names(words: list[str]) -> list[str]:
    """Flags in one hpl command line that its parser lacks (and, for hpl-train, a config that does not load)."""
    resolved = docgen.resolve(words)
    assert resolved is not None, words
    parser, rest = resolved
    known = docgen.option_strings(parser)
    bad = []
    for word in rest:
        word = word.strip("[]")
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            if flag not in known:
                bad.append(flag)
    if words[0] == "hpl-train" and not {"-h", "--help"} & set(words) and (problem := train_config_problem(words)):
        bad.append(problem)
    return bad


def test_every_hpl_flag_in_the_docs_exists():
    checked, problems = 0, []
    for block in all_blocks():
        if block.lang not in ("bash", "sh", "shell", ""):
            continue
        for words in command_lines(block.code):
            invocation = hpl_invocation(words)
            if invocation is None:
                continue
            checked += 1
            problems += [f"{block.where()}: {' '.join(invocation[:3])} ... {flag}" for flag in unknown_names(invocation)]
    assert checked >= 40, f"only {checked} hpl command lines found in the docs: the extraction broke"
    assert not problems, "flags the CLIs do not have:\n" + "\n".join(problems)


def test_a_renamed_flag_is_caught(monkeypatch):
    """The check above fails when a documented flag disappears from its parser."""
    from hpl_data import cli_gen

    build = cli_gen.build_parser

    def renamed():
        parser = build()
        for action in parser._actions:
            if "--mc-curtail" in action.option_strings:
                action.option_strings = ["--mc-stop-early"]
        parser._option_string_actions.pop("--mc-curtail")
        return parser

    monkeypatch.setattr(cli_gen, "build_parser", renamed)
    with pytest.raises(AssertionError, match="--mc-curtail"):
        test_every_hpl_flag_in_the_docs_exists()


# ---- marked blocks run ----------------------------------------------------------------------------------

def pages_with_runnable_blocks() -> list[Path]:
    return [p for p in markdown_files() if any(b.marked for b in code_blocks(p))]


@pytest.mark.parametrize("page", pages_with_runnable_blocks(), ids=lambda p: str(p.relative_to(REPO)))
def test_marked_code_blocks_run(page, tmp_path, monkeypatch):
    # The docs say "hpl-eval ...": the console scripts of the interpreter running the suite, found on PATH
    # as in an activated venv (CI runs `.venv/bin/python -m pytest` without activating it).
    env = {**os.environ, "HPL_REPO": str(REPO),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    monkeypatch.chdir(tmp_path)
    for block in (b for b in code_blocks(page) if b.marked):
        assert block.lang in ("python", "bash"), f"{block.where()}: cannot run a {block.lang!r} block"
        if block.lang == "python":
            exec(compile(block.code, block.where(), "exec"), {"__name__": "__docs__"})
            continue
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, f"{block.where()} failed ({run.returncode}):\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


# ---- README ---------------------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slugify(re.sub(r"[`*]", "", m), "-") for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


def test_readme_is_a_landing_page_whose_links_resolve():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    targets = LINK.findall(readme.read_text())
    assert len(targets) >= 10
    for target in targets:
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = REPO / file
        assert path.exists(), f"README links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(path), f"README links to {target}: no such heading"


# ---- the site -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs_gen_files", reason="the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out


def test_site_has_every_generated_page(site):
    for name in docgen.env_names():
        page = (site / "envs" / name / "index.html").read_text()
        assert "Action Space" in page and "Gymnasium id" in page, name
    for cli in docgen.CLIS:
        page = (site / "reference" / "cli" / cli.slug / "index.html").read_text()
        for flag in sorted(docgen.option_strings(docgen.parser_of(cli)) - {"-h", "--help"}):
            assert flag in page, f"{cli.command}: {flag} missing from its reference page"
    assert "RolloutEngine" in (site / "reference" / "api" / "data" / "index.html").read_text()


def test_site_renders_in_chromium(site):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
    from test_view import chromium_path

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for path, text in [("/", "Hierarchical Preference Learning"), ("/envs/webshop/", "Action Space"),
                               ("/reference/cli/hpl-gen/", "--mc-rollouts")]:
                page.goto(base + path)
                page.wait_for_load_state("load")
                assert text in page.inner_text("article"), path
            page.goto(base + "/")
            page.click("label.md-search__icon[for='__search']") if page.locator(
                "input.md-search__input").is_hidden() else None
            # the search index is built by a web worker after load; a query typed before it is ready can
            # go unanswered (seen under load), so the query is typed again, up to 3 times
            for _ in range(3):
                page.fill("input.md-search__input", "")
                page.fill("input.md-search__input", "hpl-gen")
                with contextlib.suppress(PlaywrightTimeout):
                    page.wait_for_selector(".md-search-result__item", timeout=20_000)
                    break
            assert page.locator(".md-search-result__item").count() >= 3
            browser.close()
    finally:
        server.shutdown()
        server.server_close()  # its listening socket, else collected (and warned about) in a later test
    assert not errors, errors
