"""hpl-data download against a local HTTP mirror: progress, checksum, atomic placement."""

import functools
import http.server
import shutil
import threading

import pytest

from hpl_data import download as dl


@pytest.fixture()
def mirror(tmp_path, data_dir):
    src = tmp_path / "mirror"
    (src / "webshop").mkdir(parents=True)
    shutil.copy(data_dir / "webshop" / "items_ins_v2_1000.json", src / "webshop")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield src, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_checksum(mirror, tmp_path, monkeypatch):
    src, url = mirror
    monkeypatch.setenv("HPL_DOWNLOAD_MIRROR", url)
    spec = next(s for s in dl.FILES["webshop"] if s.relpath.endswith("items_ins_v2_1000.json"))
    root = tmp_path / "root"
    path = dl.fetch(spec, root)
    assert dl.sha256_of(path) == spec.sha256
    # a tampered source is rejected and nothing is left in place
    (src / "webshop" / "items_ins_v2_1000.json").write_text("{}")
    path.unlink()
    with pytest.raises(dl.DownloadError, match="sha256"):
        dl.fetch(spec, root)
    assert not path.exists() and not list(path.parent.glob(".*part"))


def test_download_reports_unreachable_source(tmp_path, monkeypatch):
    monkeypatch.setenv("HPL_DOWNLOAD_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(dl.DownloadError, match="could not fetch"):
        dl.download("webshop", tmp_path)


def test_intercode_sql_recipe_matches_the_published_bytes(tmp_path, data_dir, monkeypatch):
    """Every intercode-sql file's recorded sha256 matches the real file (served from a local mirror)."""
    src = tmp_path / "mirror"
    for spec in dl.FILES["intercode-sql"] + dl.FILES["prompts"]:
        (src / spec.relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir / spec.relpath, src / spec.relpath)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HPL_DOWNLOAD_MIRROR", f"http://127.0.0.1:{server.server_address[1]}")
        paths = dl.download("intercode-sql", tmp_path / "root") + dl.download("prompts", tmp_path / "root")
    finally:
        server.shutdown()
    assert len(paths) == len(dl.FILES["intercode-sql"]) + len(dl.FILES["prompts"])
