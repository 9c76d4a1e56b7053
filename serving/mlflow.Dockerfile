# syntax=docker/dockerfile:1
# MLflow tracking server + model registry with a PostgreSQL backend store (serving/compose.yaml).
# The official ghcr.io/mlflow/mlflow image has no PostgreSQL driver, hence this small image.
# Build context: the repo root, so mlflow's own dependencies follow requirements.lock, the same
# pins the training and serving clients use.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir -c /tmp/requirements.lock mlflow==3.17.2 psycopg2-binary==2.9.10 \
    && rm /tmp/requirements.lock

# /mlartifacts exists in the image and belongs to the server's user, so a named volume mounted
# there starts with that owner and the non-root server can write artifacts into it.
RUN groupadd --gid 10001 mlflow \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER 10001:10001
WORKDIR /home/mlflow

EXPOSE 5000
# serving/compose.yaml gives the full command (backend store, artifacts, workers).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
