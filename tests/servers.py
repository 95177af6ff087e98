from quota.testing import *  # noqa: F403 - the harness moved to quota.testing; conftest imports it from here
