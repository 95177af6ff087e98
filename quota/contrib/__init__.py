"""Integrations with frameworks, each an optional extra: ``quota.contrib.django`` (``quota[django]``)."""
