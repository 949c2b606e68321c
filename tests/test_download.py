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
