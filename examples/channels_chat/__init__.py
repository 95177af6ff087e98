"""A Django Channels chat consumer metered with quota (see consumer.py)."""
