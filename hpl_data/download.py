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
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


def _gdrive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


WEBSHOP_COMMIT = "64fa2a5c15c7daa698b9ac93f5bb5437b634c9bd"
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
    "webshop-full": [
        FileSpec("webshop/items_shuffle.json", _gdrive("1A2whVgOO0euk5O13n2iYDM0bQRkkRduB"), note="1.18 M products"),
        FileSpec("webshop/items_ins_v2.json", _gdrive("1s2j6NgHljiZzQNL3veZaAiyW_qDEgBNi")),
        FileSpec("webshop/items_human_ins.json", _gdrive("14Kb5SPBk_jfdLZ_CDBNitW98QLDlKR5O")),
    ],
}


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


def download(env: str, root: Path, full: bool = False) -> list[Path]:
    specs = list(FILES.get(env, []))
    if not specs:
        raise DownloadError(f"no download recipe for {env!r}; available: {sorted(k for k in FILES if '-' not in k)}")
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
