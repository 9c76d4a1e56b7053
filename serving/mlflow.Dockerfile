# syntax=docker/dockerfile:1
# MLflow tracking server + model registry with a PostgreSQL backend store (serving/compose.yaml).
# The official ghcr.io/mlflow/mlflow image has no PostgreSQL driver, hence this small image.
# psycopg 3: SQLAlchemy 2.1 maps postgresql:// to it (with psycopg2 alone the server does not start);
# mlflow[auth]: the basic-auth app (--app-name basic-auth).
# Build context: the repo root, so mlflow's own dependencies follow requirements.lock, the same
# pins the training and serving clients use.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir -c /tmp/requirements.lock "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" \
    && rm /tmp/requirements.lock

# /mlartifacts and /mlauth exist in the image and belong to the server's user, so named volumes
# mounted there start with that owner and the non-root server can write into them.
RUN groupadd --gid 10001 mlflow \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts /mlauth /etc/mlflow \
    && chown mlflow:mlflow /mlartifacts /mlauth \
    && printf '%s\n' '[mlflow]' 'default_permission = READ' 'database_uri = sqlite:////mlauth/basic_auth.db' \
        'admin_username = admin' 'authorization_function = mlflow.server.auth:authenticate_request_basic_auth' \
        'auth_cache_ttl_seconds = 60' \
        > /etc/mlflow/basic_auth.ini
USER 10001:10001
WORKDIR /home/mlflow

EXPOSE 5000
# serving/compose.yaml gives the full command (backend store, artifacts, workers).
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
