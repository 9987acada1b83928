# gradwatch on an official CUDA-enabled PyTorch runtime image (torch comes from the image).
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GRADWATCH_DATA_DIR=/data \
    GRADWATCH_HOST=0.0.0.0 \
    GRADWATCH_PORT=8000

RUN useradd --create-home --uid 10001 gradwatch \
 && mkdir -p /data /app && chown gradwatch:gradwatch /data /app
WORKDIR /app
COPY pyproject.toml README.md /tmp/src/
COPY trainer /tmp/src/trainer
COPY server /tmp/src/server
COPY frontend /tmp/src/frontend
# A regular (not editable) install: the dashboard's files are package data (gradwatch.frontend).
# torch is already in the image; [server] adds the web server and the built-in trainer's datasets.
# EXTRAS=server,ray builds the image of compose's `ray` profile (Ray head, Ray workers, gradwatch).
ARG EXTRAS=server
RUN pip install "/tmp/src[${EXTRAS}]" && rm -rf /tmp/src

USER gradwatch
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"
# The same start command the tests run (tests/test_deploy.py checks it).
CMD ["gradwatch", "serve"]
