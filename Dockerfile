# One image for every quota process: the API (gunicorn) and the nightly dump (`quota scheduler`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY quota ./quota
COPY api ./api
# installed as the packages quota and quota_server (api/, see pyproject.toml)
# gunicorn's settings (api/gunicorn_conf.py): the metrics directory readied, logs with time and level
COPY gunicorn.conf.py ./
# the server extra: gunicorn, which docker-compose.yml runs the API with
RUN pip install '.[server]' && useradd --system --uid 10001 quota
USER quota

# Overridden per service in docker-compose.yml.
CMD ["quota", "--help"]
