# gunicorn settings for the quota API, found by gunicorn in the working directory or given with
# `-c gunicorn.conf.py`: `gunicorn -c gunicorn.conf.py 'api:create_app()' -w 4 -b 0.0.0.0:8000`.
# The settings live in api/gunicorn_conf.py (installed with quota: `-c python:api.gunicorn_conf`).
from api.gunicorn_conf import (  # noqa: F401 - gunicorn reads these names from this module
    access_log_format,
    accesslog,
    child_exit,
    logconfig_dict,
    on_starting,
    timeout,
)
