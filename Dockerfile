# syntax=docker/dockerfile:1
# One image for every part of mxfed; compose and Kubernetes pick the part with
# `mxfed run --service NAME`.
#
#   docker build -t mxfed .
#
# Stages: the gRPC health probe (a small static binary, so a healthcheck does
# not start Python), the dependencies (their own layer, rebuilt only when
# pyproject.toml changes), then mxfed itself on a slim runtime as a non-root user.

FROM golang:1.25-bookworm AS probe
RUN CGO_ENABLED=0 GOBIN=/out go install github.com/grpc-ecosystem/grpc-health-probe@v0.4.40

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/mxfed
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /opt/mxfed/bin/pip install -r requirements.txt
COPY README.md ./
COPY matrix_protocol ./matrix_protocol
COPY mxfed ./mxfed
COPY mxfed_api ./mxfed_api
COPY gateway ./gateway
COPY services ./services
COPY protos ./protos
RUN /opt/mxfed/bin/pip install --no-deps . && /opt/mxfed/bin/python -m compileall -q /opt/mxfed

FROM python:3.11-slim-bookworm
# curl: the gateway's healthcheck (GET /health over TLS). /media: the media store
# (compose mounts one shared volume there for every media replica).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --user-group --home-dir /data --create-home mxfed \
    && mkdir /media && chown mxfed:mxfed /media
COPY --from=probe /out/grpc-health-probe /usr/local/bin/grpc_health_probe
COPY --from=build /opt/mxfed /opt/mxfed
ENV PATH=/opt/mxfed/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 MXFED_DATA_DIR=/data
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["mxfed"]
CMD ["run"]
