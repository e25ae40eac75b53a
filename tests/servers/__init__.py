"""Real servers the tests run against, one module per server, each exposing pytest fixtures.

Every server listens on 127.0.0.1 on a free port, starts once per session and is stopped by its
own PID at the end. `tests/conftest.py` loads these modules through `pytest_plugins`.
"""
