"""Fetch benchmark files from their public sources into the data root, verified.

Each file has a source URL and, where the published bytes are known, a sha256; files
without a known digest are checked to parse as JSON instead. Downloads go to a temporary
file and are renamed into place only after verification, so an interrupted or corrupt
download never leaves a half file behind. ``HPL_DOWNLOAD_MIRROR`` (a base URL, ``file://``
or ``http://``) replaces every source with ``$MIRROR/<relative path>``, for offline mirrors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


def _gdrive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


WEBSHOP_COMMIT = "64fa2a5c15c7daa698b9ac93f5bb5437b634c9bd"
INTERCODE = ("princeton-nlp/intercode", "c3e46d827cfc9d4c704ec078f7abf9f41e3191d8")
ETO = ("Yifan-Song793/ETO", "a2fc5da38f8d00cfaf3f9b6370d586eebaf72904")
IPR = ("WeiminXiong/IPR", "93335a3a818b46c1d0e081cd76288cf1cbf7dee4")
AGENTGYM_COMMIT = "3ef9235d23e68e7c2920c5422ad957dc8ced5c6c"


@dataclass(frozen=True)
class FileSpec:
    relpath: str
    url: str
    sha256: str | None = None
    optional: bool = False
    note: str = ""


FILES: dict[str, list[FileSpec]] = {
    "webshop": [
        FileSpec("webshop/items_shuffle_1000.json", _gdrive("1EgHdxQ_YxqIQlvvq5iKlCrkEKR6-j0Ib"),
                 note="WebShop 1k catalog (setup.sh -d small)"),
        FileSpec("webshop/items_ins_v2_1000.json",
                 _github("WooooDyy/AgentGym", AGENTGYM_COMMIT, "agentenv-webshop/webshop/data/items_ins_v2_1000.json"),
                 "f88a36314a397b53b3d9c3fa5878e5f7b26d35019a51ec83fbedeca61a948f6f"),
        FileSpec("webshop/human_goals.json",
                 _github("princeton-nlp/WebShop", WEBSHOP_COMMIT, "baseline_models/data/human_goals.json"),
                 "b68746ed66cd31fdc5f70eb3f5831a46b38163563b57a66ddcab8fd60ee0cbdc", optional=True),
        FileSpec("webshop/items_human_ins.json", _gdrive("14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O"), optional=True,
                 note="human goal targets"),
    ],
    "intercode-sql": [
        FileSpec("intercode_sql/ic_spider_dbs.sql", _github(*INTERCODE, "data/sql/spider/ic_spider_dbs.sql"),
                 "61f6e8000cb5bb696f123fa55e111acdcd8da7eca64f452a36fd1a6e5fb1781a"),
        FileSpec("intercode_sql/ic_spider_dev.json", _github(*INTERCODE, "data/sql/spider/ic_spider_dev.json"),
                 "68c9ecb0692c80770f46c724cc073ea76be4f301a294caa532c050546948128e"),
        FileSpec("expert/intercode_sql_results/gpt-3.5/ic_sql_react_10_turns.json", _github(*INTERCODE, "data/results/sql/gpt-3.5/ic_sql_react_10_turns.json"),
                 "cbf8d50c389c946becae1226af41221d9f92378a82faef2d1dfebc69311092d5", optional=True),
        FileSpec("expert/intercode_sql_results/gpt-4/ic_sql_multiturn_gpt-4_10_turns.json", _github(*INTERCODE, "data/results/sql/gpt-4/ic_sql_multiturn_gpt-4_10_turns.json"),
                 "fcf8f4a9ecd248339fbb5665cf05ce872aad996d2ee32b79b9862291148796b6", optional=True),
        FileSpec("expert/intercode_sql_results/gpt-4/ic_sql_multiturn_gpt-4_1_turns.json", _github(*INTERCODE, "data/results/sql/gpt-4/ic_sql_multiturn_gpt-4_1_turns.json"),
                 "4e46825aec0482792b6d1cc3e008b02a14918fd16cf512deb21e21301087557e", optional=True),
    ],
    "prompts": [],  # filled below from PROMPT_FILES
    "webshop-full": [
        FileSpec("webshop/items_shuffle.json", _gdrive("1A2whVgOO0euk5O13n2iYDM0bQRkkRduB"), note="1.18 M products"),
        FileSpec("webshop/items_ins_v2.json", _gdrive("1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi")),
        FileSpec("webshop/items_human_ins.json", _gdrive("14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O")),
    ],
}


# ETO/IPR instruction and in-context example files: (relative path, repo, path in repo, sha256)
PROMPT_FILES = [
    ("prompts/alfworld_3prompts_react.json", ETO, "eval_agent/data/alfworld/prompts/alfworld_3prompts.json", "15559f6621eff809e18f7c7496aef2f2c4785b65374f61879e5cb10c5aee18f7"),
    ("prompts/eto/icl_examples/alfworld_icl.json", ETO, "eval_agent/prompt/icl_examples/alfworld_icl.json", "06b00f15c320c484d86fffcfaedcd057eb7cca544b452683cac9f8b9a5d2ff55"),
    ("prompts/eto/icl_examples/webshop_icl.json", ETO, "eval_agent/prompt/icl_examples/webshop_icl.json", "bb59e41bc6909d475919f9c77d1a7c552c1747f64eeb7b5835102713b9ffec7e"),
    ("prompts/eto/instructions/alfworld_inst.txt", ETO, "eval_agent/prompt/instructions/alfworld_inst.txt", "ed99085b2fcef955363a031d274e9ffcc7a312c8350776f7464b4a8fb9ae85d7"),
    ("prompts/eto/instructions/webshop_inst.txt", ETO, "eval_agent/prompt/instructions/webshop_inst.txt", "073c199aa1418863a4c5fd815d38db7cadaccc9697dd49a4f1accba406c70529"),
    ("prompts/ipr/icl_examples/alfworld_icl.json", IPR, "eval_agent/prompt/icl_examples/alfworld_icl.json", "e4fd175ebb24016540dab0b6780937cdbbd0b04ba241eb7137837ad422fbdd0c"),
    ("prompts/ipr/icl_examples/intercode_sql_icl.json", IPR, "eval_agent/prompt/icl_examples/intercode_sql_icl.json", "a8141421a2e8a90dc52837bca354ff96785de0482948f2b42d23131d5e32d74c"),
    ("prompts/ipr/icl_examples/webshop_icl.json", IPR, "eval_agent/prompt/icl_examples/webshop_icl.json", "bb59e41bc6909d475919f9c77d1a7c552c1747f64eeb7b5835102713b9ffec7e"),
    ("prompts/ipr/instructions/alfworld_inst.txt", IPR, "eval_agent/prompt/instructions/alfworld_inst.txt", "1315010838ff752b1d8b715534f61bf41eae2d2d9f419072ca6913dd92cab1d5"),
    ("prompts/ipr/instructions/intercode_sql_inst.txt", IPR, "eval_agent/prompt/instructions/intercode_sql_inst.txt", "bb1ac3150720be7324420c541090d11d24da5a8c666e52bcba3571b891dca435"),
    ("prompts/ipr/instructions/webshop_inst.txt", IPR, "eval_agent/prompt/instructions/webshop_inst.txt", "073c199aa1418863a4c5fd815d38db7cadaccc9697dd49a4f1accba406c70529"),
]
FILES["prompts"] = [FileSpec(rel, _github(*repo, src), sha) for rel, repo, src, sha in PROMPT_FILES]


class DownloadError(RuntimeError):
    pass


def source_url(spec: FileSpec) -> str:
    mirror = os.environ.get("HPL_DOWNLOAD_MIRROR")
    return f"{mirror.rstrip('/')}/{spec.relpath}" if mirror else spec.url


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify(spec: FileSpec, path: Path) -> None:
    if spec.sha256:
        got = sha256_of(path)
        if got != spec.sha256:
            raise DownloadError(f"{spec.relpath}: sha256 {got} != expected {spec.sha256}")
    elif path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DownloadError(f"{spec.relpath}: downloaded file is not valid JSON ({e})") from e


def fetch(spec: FileSpec, root: Path, progress: Progress | None = None, timeout: float = 60) -> Path:
    dest = root / spec.relpath
    if dest.exists():
        verify(spec, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    url = source_url(spec)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            task = progress.add_task(spec.relpath, total=total) if progress else None
            while block := resp.read(1 << 16):
                out.write(block)
                if progress:
                    progress.advance(task, len(block))
        verify(spec, tmp)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{spec.relpath}: could not fetch {url}: {e}") from e
    except DownloadError:
        tmp.unlink(missing_ok=True)
        raise
    shutil.move(tmp, dest)
    return dest


def download_alfworld(root: Path) -> list[Path]:
    """ALFWorld's own downloader (the `alfworld-download` script of the alfworld package) into
    ``root/alfworld``: json_2.1.1 with every game's game.tw-pddl, plus the PDDL/grammar files."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("alfworld-download")
    if not script.exists():
        raise DownloadError("alfworld-download not found: pip install 'hpl[alfworld]'")
    target = root / "alfworld"
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, str(script), "--data-dir", str(target)])
    if proc.returncode != 0:
        raise DownloadError(f"alfworld-download failed with exit code {proc.returncode}")
    games = sorted(target.glob("json_2.1.1/*/*/*/game.tw-pddl"))
    if not games:
        raise DownloadError(f"alfworld-download finished but no game.tw-pddl files are under {target}")
    return games[:3]


# Envs whose data comes from their own downloader rather than from files in FILES.
DOWNLOADERS: dict[str, Callable[[Path], list[Path]]] = {"alfworld": download_alfworld}


def targets() -> list[str]:
    """What ``hpl-data download`` fetches: each env with files or its own downloader, and the prompts
    (an env's ``-full`` files come with ``--full``)."""
    return sorted({*DOWNLOADERS, *(k for k in FILES if not k.endswith("-full"))})


def download(env: str, root: Path, full: bool = False) -> list[Path]:
    if env in DOWNLOADERS:
        return DOWNLOADERS[env](root)
    specs = list(FILES.get(env, []))
    if not specs:
        raise DownloadError(f"no download recipe for {env!r}; available: {targets()}")
    if full:
        specs += FILES.get(f"{env}-full", [])
    done, errors = [], []
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()) as progress:
        for spec in specs:
            try:
                done.append(fetch(spec, root, progress))
            except DownloadError as e:
                if spec.optional:
                    progress.console.print(f"[yellow]optional file skipped: {e}[/yellow]")
                else:
                    errors.append(str(e))
    if errors:
        raise DownloadError("\n".join(errors))
    return done
