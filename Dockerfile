# The ISAL Label Studio ML backend (gunicorn on :9090; `python -m backend.worker` for the job
# worker service of docker/docker-compose.yml). Build from the repository root:
#   docker build -t isal-backend .
# Size: 6.5 GB (measured on python:3.11-slim's stand-in), of which PyPI's torch with its CUDA
# libraries is 5.6 GB: nvidia-* wheels 3.4 GB, torch 1.2 GB, triton 0.9 GB. For a CPU-only image
# (not built nor measured here: no access to download.pytorch.org) pass PyTorch's CPU wheel index:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t isal-backend .
# (torch and torchvision, at the pins of requirements.txt, come from that index; the rest from PyPI.)
# No build tools and no pip cache end up in the image, so a multi-stage build would save nothing.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=9090 \
    WORKERS=1 \
    THREADS=8 \
    MODEL_DIR=/data/models

WORKDIR /app
COPY requirements.txt .
ARG TORCH_INDEX_URL=
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" $(grep -E '^torch(vision)?==' requirements.txt); \
    fi \
 && pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY isal_core isal_core
COPY backend backend
RUN pip install --no-deps . && mkdir -p /data/models

VOLUME ["/data/models"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health')"
CMD ["python", "-m", "backend"]
