# syntax=docker/dockerfile:1
# One image for every role (API, worker, beat, Flower, migrations): docker-compose.yml picks
# the command and each service's healthcheck, so the image declares none of its own.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: the OpenMP runtime LightGBM and XGBoost link against (GCC 12 on bookworm).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1=12.* \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# A fixed, unprivileged uid, so named volumes keep one owner across rebuilds.
RUN groupadd --system --gid 10001 trader \
    && useradd --system --uid 10001 --gid trader --home-dir /app --shell /usr/sbin/nologin trader
COPY --chown=trader:trader . .
RUN mkdir -p database models best_params logs /tmp/prometheus \
    && chown -R trader:trader database models best_params logs /tmp/prometheus

USER trader
ENV PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    BIND=0.0.0.0:5000
EXPOSE 5000 9808

CMD ["gunicorn", "--config", "gunicorn_config.py", "app:create_app()"]
