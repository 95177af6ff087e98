"""Who is metered, and on which model: the ``USER_ID``, ``MODEL_RESOLVER`` and ``CUSTOM_MODELS`` hooks.

**The user id.** quota's user ids are ``[A-Za-z0-9_.@+-]{1,128}`` (they go into Redis key names);
Django usernames are not (Unicode, up to 150 characters: ``张三``). So the default id is the
primary key, ``str(user.pk)``, which is stable when a user is renamed. ``QUOTA["USER_ID"]`` names
another callable (user -> str); :func:`quota_user_id` is the one accessor.

**The model.** The browser never chooses what is metered. A requested id goes through
``QUOTA["MODEL_RESOLVER"]`` ((user, requested id) -> the id to meter); the default allows exactly
the system models of the price table plus the user's own custom models as
``QUOTA["CUSTOM_MODELS"]`` (user -> their ids) lists them, and refuses anything else with
:class:`ModelNotAllowed`. Without the resolver, a browser sending ``"deepseek-chat"`` (no
``system_`` prefix: a free custom model to quota) got the platform's model at cost 0.
"""

from __future__ import annotations

from typing import Any

from quota import InvalidInput, StorageUnavailable, UnknownModel

from .conf import QuotaSettingsError, quota_settings

SHOWN_CHARS = 48  # the longest model id quota accepts


class ModelNotAllowed(UnknownModel):
    """The requested model is not one this user may use: not a system model of the price table,
    nor one of the user's own models. Nothing was metered and no LLM was called.

    ``model_id`` is what was asked for (None: nothing), ``allowed`` what may be asked for.
    """

    code = "model_not_allowed"

    def __init__(self, model_id: object, allowed: list[str]) -> None:
        self.model_id = model_id if isinstance(model_id, str) else None
        self.allowed = allowed
        choose = f"choose one of: {', '.join(allowed)}" if allowed else "no model is available to you"
        if self.model_id is None:
            message = f"no model was given; {choose}"
        else:
            shown = self.model_id if len(self.model_id) <= SHOWN_CHARS else self.model_id[:SHOWN_CHARS] + "..."
            message = f"model {shown!r} is not available to you; {choose}"
        super().__init__(message)


def default_user_id(user: Any) -> str:
    """``str(user.pk)``: valid in a quota id whatever the username, and stable across renames."""
    return str(user.pk)


def quota_user_id(user: Any) -> str:
    """The quota user id of a Django user, by ``QUOTA["USER_ID"]`` (default ``str(user.pk)``)."""
    if user is None or not getattr(user, "is_authenticated", False):
        raise InvalidInput("an anonymous user has no quota user id: log in first")
    user_id = quota_settings().user_id(user)
    if not isinstance(user_id, str):
        raise QuotaSettingsError(
            f"QUOTA['USER_ID'] must return a str, got {type(user_id).__name__}", check_id="quota.E003"
        )
    return user_id


def allowed_model_ids(user: Any) -> list[str]:
    """What ``user`` may ask for by default: the system models of the price table, then the
    user's own models (``QUOTA["CUSTOM_MODELS"]``). May query the database: call it from sync code."""
    conf = quota_settings()
    allowed = sorted(conf.settings.prices.system_models)
    if conf.custom_models is not None:
        for model_id in conf.custom_models(user) or ():
            if isinstance(model_id, str) and model_id not in allowed:
                allowed.append(model_id)
    return allowed


def default_model_resolver(user: Any, requested: Any) -> str:
    """The requested id itself when it is exactly one of :func:`allowed_model_ids`, else
    :class:`ModelNotAllowed`. No folding, no prefix rule: an id is allowed, or it is refused."""
    allowed = allowed_model_ids(user)
    if isinstance(requested, str) and requested in allowed:
        return requested
    raise ModelNotAllowed(requested, allowed)


def resolve_model(user: Any, requested: Any) -> str:
    """The model id to meter for ``user``'s ``requested`` one, by ``QUOTA["MODEL_RESOLVER"]``.

    Raises :class:`ModelNotAllowed` (an ``UnknownModel``) for an id the user may not use. May
    query the database: from async code, call it through ``sync_to_async``.
    """
    model_id = quota_settings().model_resolver(user, requested)
    if not isinstance(model_id, str):
        raise QuotaSettingsError(
            f"QUOTA['MODEL_RESOLVER'] must return a model id (str), got {type(model_id).__name__}",
            check_id="quota.E003",
        )
    return model_id


def error_event(exc: Exception) -> dict[str, Any]:
    """The event a browser gets instead of a reply: ``{"type": "error", "code": ..., "message": ...}``.

    ``model_not_allowed`` (with ``model_id`` and ``allowed``), ``unknown_model`` (a ``system_`` id
    missing from the price table), ``quota_unavailable`` (Redis away under ``ON_UNAVAILABLE=deny``;
    the message names no host), else ``bad_request``.
    """
    if isinstance(exc, ModelNotAllowed):
        return {
            "type": "error",
            "code": ModelNotAllowed.code,
            "message": str(exc),
            "model_id": exc.model_id,
            "allowed": exc.allowed,
        }
    if isinstance(exc, UnknownModel):
        return {"type": "error", "code": "unknown_model", "message": str(exc)}
    if isinstance(exc, StorageUnavailable):
        return {
            "type": "error",
            "code": "quota_unavailable",
            "message": "Usage metering is unavailable; please retry shortly.",
        }
    return {"type": "error", "code": "bad_request", "message": str(exc)}
