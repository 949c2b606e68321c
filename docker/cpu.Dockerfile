# CPU toolkit image: hpl-gen / hpl-eval / hpl-data with the built-in agents and policies (no torch,
# no vLLM; add the extras you need). Data and outputs are volumes:
#   docker build --network host -f docker/cpu.Dockerfile -t hpl-cpu:latest .
#   docker run --rm --network none -v "$HPL_DATA_DIR":/data:ro -v "$PWD/runs":/runs hpl-cpu:latest \
#       hpl-gen --env webshop --expert oracle --policy heuristic --split train --limit 20 --out /runs/gen
# BASE: any Debian-like image with python3 >= 3.10 and venv, e.g. python:3.11-slim-bookworm from a
# registry, or offline: mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates
# bookworm rootfs.tar && docker import rootfs.tar hpl-python-base:bookworm (then --build-arg BASE=...).
# The build needs PyPI (--network host); running needs no network. Behind a TLS-intercepting proxy,
# put its CA bundle at docker/extra-ca.crt (git-ignored; e.g. cp /etc/ssl/certs/ca-certificates.crt)
# and pip uses it.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ENV HPL_DATA_DIR=/data HPL_CACHE_DIR=/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/hpl
COPY pyproject.toml README.md LICENSE ./
COPY hpl_envs hpl_envs
COPY hpl_data hpl_data
COPY hpl_train hpl_train
# the Dockerfile itself guarantees the glob matches something; extra-ca.crt is optional
COPY docker/cpu.Dockerfile docker/extra-ca*.crt /tmp/hpl-ca/
RUN if [ -f /tmp/hpl-ca/extra-ca.crt ]; then export PIP_CERT=/tmp/hpl-ca/extra-ca.crt; fi \
    && pip install --upgrade pip && pip install . && rm -rf /tmp/hpl-ca \
    && python -c "import hpl_envs, hpl_data; print('hpl ok')"
VOLUME ["/data", "/cache", "/runs"]
CMD ["hpl-gen", "--help"]
