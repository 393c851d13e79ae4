# The shopgraph HTTP API (see docker-compose.yml for Neo4j + API together).
#   docker build -t shopgraph .
#   docker run -p 8000:8000 -v shopgraph-workspace:/data/workspace shopgraph
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# OpenMP runtime for faiss / implicit / torch
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

# CPU-only torch first: the default PyPI wheel pulls gigabytes of CUDA libraries a CPU
# server never uses.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"

# Dependencies in their own layer (read from pyproject.toml), so a code change does not
# re-download them.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable install: data files inside the packages (kg/lexicons/*.tsv) are read from the
# source tree; a plain wheel would not carry them (pyproject has no package-data entry).
COPY kg ./kg
COPY encoders ./encoders
COPY recommender ./recommender
COPY api ./api
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 shopgraph \
    && mkdir -p /data/workspace \
    && chown -R shopgraph:shopgraph /data

USER shopgraph
ENV SHOPGRAPH_WORKSPACE=/data/workspace
VOLUME ["/data/workspace"]
EXPOSE 8000

# slim has no curl: probe liveness with the standard library
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]

CMD ["shopgraph", "serve", "--host", "0.0.0.0", "--port", "8000"]
