# The ISAL Label Studio ML backend (gunicorn on :9090). Build from the repository root:
#   docker build -t isal-backend .
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
RUN pip install -r requirements.txt
COPY pyproject.toml README.md ./
COPY isal_core isal_core
COPY backend backend
RUN pip install --no-deps . && mkdir -p /data/models

VOLUME ["/data/models"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health')"
CMD ["python", "-m", "backend"]
