"""The ``quota_warning`` event a chat front end pushes to the browser when a record crossed an
alert threshold (docs/ALERTS.md). ``quota_exceeded``, its sibling for a refused message, is in
``quota._core``."""

from __future__ import annotations

from typing import Any

from ._money import nano_to_decimal, nano_to_json


def quota_warning_event(threshold: int, used_nano: int, credit_nano: int, resets_at: str) -> dict[str, Any]:
    """The event for a record that crossed ``threshold`` (``UsageResult.warning``): Chinese, then
    English, like ``quota_exceeded``. The webhook gets ``quota.threshold_crossed`` from the outbox."""
    used_text, credit_text = nano_to_decimal(used_nano), nano_to_decimal(credit_nano)
    day = resets_at[:10]
    if used_nano >= credit_nano:
        message = (
            f"本月系统模型额度已用完（已用 {used_text} / {credit_text} 元），将于 {day} 重置；"
            "当前回复不受影响，之后的新消息需改用自定义模型。"
            f" You have used all of this month's system-model credit ({used_text} of {credit_text} CNY). "
            f"It resets on {day} (UTC); the reply in progress is not affected, new messages need a custom model."
        )
    else:
        message = (
            f"本月系统模型额度已用 {threshold}%（已用 {used_text} / {credit_text} 元），将于 {day} 重置。"
            f" You have used {threshold}% of this month's system-model credit ({used_text} of {credit_text} CNY). "
            f"It resets on {day} (UTC)."
        )
    return {
        "type": "quota_warning",
        "code": "quota_warning",
        "threshold": threshold,
        "monthly_used": nano_to_json(used_nano),
        "monthly_credit": nano_to_json(credit_nano),
        "resets_at": resets_at,
        "message": message,
    }
