"""No tables: the usage lives in Redis (this month) and the SQL history (``quota dump``).

``Usage`` exists for the admin (a "Quota > Usage" entry, and its permissions): it is unmanaged,
so ``migrate`` never creates its table and nothing ever queries it (see :mod:`.admin`).
"""

from django.db import models


class Usage(models.Model):
    class Meta:
        managed = False
        db_table = "quota_usage_none"  # never created, never read
        default_permissions = ("view",)
        permissions = [("top_up_credit", "Can set a user's monthly credit (top up)")]
        verbose_name = "usage"
        verbose_name_plural = "usage"
