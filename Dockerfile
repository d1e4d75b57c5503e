# One image for every part of mxfed; the compose file picks the part with
# `mxfed run --service NAME`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY matrix_protocol ./matrix_protocol
COPY mxfed ./mxfed
COPY mxfed_api ./mxfed_api
COPY gateway ./gateway
COPY services ./services
COPY protos ./protos
RUN pip install --no-cache-dir .

# /media: the media store (compose mounts one shared volume there for every media replica).
RUN useradd --create-home --uid 1000 mxfed && mkdir -p /data /media && chown mxfed /data /media
USER mxfed
VOLUME ["/data"]
ENV MXFED_DATA_DIR=/data
ENTRYPOINT ["mxfed"]
CMD ["run"]
