# syntax=docker/dockerfile:1
# ofnotify as a container image.
#
#   docker build -t ofnotify .
#   docker run --rm -e OFNOTIFY_SECRET=... \
#     -v "$PWD/ofnotify.yaml:/etc/ofnotify/ofnotify.yaml:ro" -v ofnotify-data:/var/lib/ofnotify \
#     ofnotify
#
# Two stages: the first installs ofnotify with its PostgreSQL drivers into a virtualenv,
# the second copies only that virtualenv onto a clean base image (no sources, no pip
# cache, no build tools). Both stages use the same base, so the virtualenv's interpreter
# path is valid in the second. The base is pinned to a patch release and a Debian
# release so that a rebuild gives the same Python.

FROM python:3.11.9-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/ofnotify
WORKDIR /src
# What `pip install .` needs and nothing else (.dockerignore keeps the rest out):
# the project metadata (pyproject names README.md as its readme) and the two packages.
COPY pyproject.toml README.md ./
COPY component/ component/
COPY notifiers/ notifiers/
# Versions come from pyproject.toml's ranges; every dependency ships manylinux wheels.
RUN /opt/ofnotify/bin/pip install --no-cache-dir ".[postgres]"


FROM python:3.11.9-slim-bookworm

LABEL org.opencontainers.image.title="ofnotify" \
      org.opencontainers.image.description="Push and email notifications for Openfire users who were offline" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed uid/gid, so that volume ownership survives image rebuilds.
RUN groupadd --system --gid 10001 ofnotify \
    && useradd --system --uid 10001 --gid ofnotify --no-create-home \
       --home-dir /var/lib/ofnotify --shell /usr/sbin/nologin ofnotify \
    && install -d -o ofnotify -g ofnotify -m 0750 /var/lib/ofnotify \
    && install -d -o root -g root -m 0755 /etc/ofnotify

COPY --from=build /opt/ofnotify /opt/ofnotify

# PYTHONUNBUFFERED: log lines reach `docker logs` at once.
# OFNOTIFY_CONFIG: where every ofnotify command (and the health check) finds the config.
ENV PATH=/opt/ofnotify/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OFNOTIFY_CONFIG=/etc/ofnotify/ofnotify.yaml

# The data directory is the working directory: the default SQLite URL
# (sqlite:///ofnotify.db) lands on the volume. Config is mounted read-only at
# /etc/ofnotify; secrets come from the environment (${VAR} in the YAML).
WORKDIR /var/lib/ofnotify
VOLUME ["/var/lib/ofnotify"]
# The ofnotify user, by number: runtimes that enforce "non-root" (Kubernetes
# runAsNonRoot) can only verify a numeric user.
USER 10001:10001

# ofnotify has no health endpoint yet: this checks that the mounted configuration is
# valid and readable (the same check `run` does before it starts). Replace it with an
# HTTP probe of /healthz once the http section exists.
# Needs `http.listen` in the config (the compose config has it); 503 until ready.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=5)"]

ENTRYPOINT ["ofnotify"]
CMD ["run", "--config", "/etc/ofnotify/ofnotify.yaml"]
