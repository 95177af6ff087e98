# gunicorn settings for the quota API, found by gunicorn in the working directory or given with
# `-c gunicorn.conf.py`: `gunicorn -c gunicorn.conf.py 'quota_server:create_app()' -w 4 -b 0.0.0.0:8000`.
# The settings live in api/gunicorn_conf.py (installed with quota: `-c python:quota_server.gunicorn_conf`).
from quota_server.gunicorn_conf import (  # noqa: F401 - gunicorn reads these names from this module
    access_log_format,
    accesslog,
    child_exit,
    logconfig_dict,
    on_starting,
    timeout,
)
