"""Benchmarks for quota, each measured beside a peer or a ceiling in the same run.

Run one area with ``.venv/bin/python -m bench <area>`` (``python -m bench`` lists them): ``core``,
``holds``, ``dump``, ``api``, ``load``, ``spool``, ``scale``, ``memory``. Servers come from
``quota.testing`` (private loopback ports, never 6379); nothing here imports ``tests/``.

The areas, one module each: ``core.py`` (the core metering comparison of issue 2, which writes
its section of docs/BENCHMARKS.md), ``holds.py``, ``dump.py``, ``api.py`` (and ``load.py`` with
``load.lua``, which reuses its gunicorn), ``spool.py``, ``scale.py``, ``memory.py``. Shared by them:

- ``workloads.py``: one class per thing measured (the Meter, raw redis-py EVALSHA, ``limits``,
  the seed's JSON read-modify-write, ...), each doing one unit of work per ``step()``.
- ``driver.py``: runs workloads in N processes in interleaved slices, keeps each one's best, and
  reads the server's INFO commandstats for the same window (``core`` and ``scale`` use it).
- ``scenarios.py``, ``server_ceiling.py`` (``redis-benchmark`` running the project's own
  ``record.lua``), ``report.py`` (the table, and its section in docs/BENCHMARKS.md): ``core``'s.
"""
