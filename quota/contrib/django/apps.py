from django.apps import AppConfig


class QuotaConfig(AppConfig):
    name = "quota.contrib.django"
    label = "quota"
    verbose_name = "Quota"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from . import checks  # noqa: F401 - registers the system checks

        setting_changed.connect(_forget_on_change, dispatch_uid="quota.contrib.django.settings")


def _forget_on_change(setting: str, **kwargs: object) -> None:
    """``override_settings(QUOTA=...)``: parse QUOTA again and rebuild the meters from it."""
    if setting == "QUOTA":
        from . import conf, meters

        conf.reset()
        meters.reset()
