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
COPY --chown=gradwatch:gradwatch pyproject.toml README.md ./
COPY --chown=gradwatch:gradwatch trainer ./trainer
COPY --chown=gradwatch:gradwatch server ./server
COPY --chown=gradwatch:gradwatch frontend ./frontend
# Editable, so the server finds frontend/ beside its package; torch is already in the image.
RUN pip install -e .

USER gradwatch
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4).status != 200)"
# The same start command the tests run (tests/test_deploy.py checks it).
CMD ["gradwatch", "serve"]
