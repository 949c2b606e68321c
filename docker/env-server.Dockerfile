# hpl-serve: hpl's envs over OpenEnv's HTTP/WebSocket protocol (WebShop, InterCode-SQL; ALFWorld needs
# the alfworld extra, which builds fast-downward from source: add it on a machine with a registry).
# Built offline: the base is Debian bookworm made with mmdebstrap (python3, venv, MariaDB for
# InterCode-SQL's local server) and `docker import`; pip installs only from the wheelhouse in the
# context (wheels/, made by `pip wheel '.[serve]' openenv==0.10.0`), with --no-index. hpl builds the context itself:
#   python -m hpl_data.serve.image build       # base (if missing) + wheelhouse + image hpl-env-server:<hash>
# Run it with the data as a read-only volume, on 127.0.0.1 of the host (host networking) or a unix socket:
#   docker run --rm --network host -v "$HPL_DATA_DIR":/data:ro hpl-env-server:<hash> --env webshop --port 8000
#   docker run --rm --network none -v "$HPL_DATA_DIR":/data:ro -v /tmp/hpl-sock:/run/hpl hpl-env-server:<hash> \
#       --env webshop --unix-socket /run/hpl/serve.sock
ARG BASE=hpl-env-server-base:bookworm
FROM ${BASE}
ENV HPL_DATA_DIR=/data HPL_CACHE_DIR=/cache PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PIP_NO_CACHE_DIR=1
# the dependencies first, hpl's own wheel last (hpl/, put apart by hpl_data.serve.image): a change to
# hpl's code rebuilds only the last, small layer; the dependencies' layer comes from Docker's cache
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /tmp/wheels /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels
COPY hpl /tmp/hpl
RUN /opt/venv/bin/pip install --no-index --no-deps /tmp/hpl/*.whl \
    && rm -rf /tmp/hpl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import hpl_data.serve.app, hpl_envs, openenv; print('hpl-serve ok')"
ENV PATH=/opt/venv/bin:$PATH
VOLUME ["/data", "/cache"]
ENTRYPOINT ["hpl-serve"]
CMD ["--help"]
