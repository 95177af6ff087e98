/* Labels in Chinese or English, chosen by the browser's language (navigator.language). */
"use strict";
window.QuotaI18n = (function () {
  const LABELS = {
    en: {
      title: "Token usage", thisMonth: "This month", cny: "CNY", remaining: "Remaining", resets: "Resets on",
      held: "Held by replies in progress", available: "Available for new messages",
      grantsLeft: "Credit grants left", grants: "Credit grants", grant: "Grant", reason: "Reason",
      grantLeft: "Left (CNY)", grantAmount: "Granted (CNY)", expires: "Expires", never: "never",
      grantsNote: "Used after this month's credit, the earliest expiry first; they do not reset with the month.",
      grantsInUse: "This month's credit is used up: messages on system models now draw on your credit grants.",
      overNote: "The system-model credit is used up: new messages on system models are refused until the reset. Custom models keep working.",
      warnNote: "You have used {pct}% of this month's system-model credit.", warnTitle: "Credit alert",
      cacheNote: "of which {cached} cache hits and {write} cache writes, priced at their own rates",
      byModel: "By model, this month", model: "Model", kind: "Kind", input: "Input tokens", output: "Output tokens",
      calls: "Calls", cost: "Cost (CNY)", noCalls: "No calls this month yet.", history: "History by month",
      month: "Month", systemCost: "System models", customCost: "Custom models", systemCostCny: "System cost (CNY)",
      customCostCny: "Custom cost (CNY)", noHistory: "No earlier months.", updated: "Updated",
      kindSystem: "system", kindCustom: "custom · counted, not limited", utc: "UTC",
      noToken: "Open this page with the link printed by `quota serve`, or as /panel#user=<user>&token=<token> (mint one with `quota token <user>`).",
      expired: "Your token has expired: mint a new one with `quota token <user>`.",
      revoked: "This token was revoked: ask for a new one (`quota token <user>`).",
      denied: "This token may not read this user's statistics.", offline: "The service is unreachable; retrying…",
      live: "live", demoUser: "demo", openPanel: "Open its panel",
      demoTitle: "Demo chat (simulated agent)", user: "User", send: "Send",
      placeholder: "Type a message…", demoIntro: "No real model is called: each message makes a chat, a tool and a summary call (and a naming call on the first message) with made-up token counts, all metered for real.",
      usedOf: "used {used} of {credit} CNY this month ({kind})", newChat: "New conversation",
      callsLine: "{purpose}: {in} in / {out} out tokens, {cost} CNY", quotaTitle: "Credit used up",
      purpose_chat: "chat", purpose_tool: "tool", purpose_summary: "summary", purpose_naming: "naming",
      adminTitle: "Operator's view", refresh: "Refresh", downloadCsv: "Download CSV", totals: "Totals", users: "Users",
      totalCost: "Cost (CNY)", tokensInOut: "Tokens in / out", over80: "At 80 % of credit or more",
      over100: "At 100 % (refused)", modelMix: "Model mix", share: "Share", noMonthCalls: "No calls in this month.",
      topSpenders: "Top spenders", systemShort: "System", customShort: "Custom",
      cachedShort: "Cache hits", cacheWriteShort: "Cache writes", nearCredit: "Near or over the credit",
      usedOfCredit: "Used / credit (CNY)", percent: "%", nobodyNear: "Nobody is at 80 % of their credit.",
      computed: "Read at", liveMonth: "live month, from Redis", archivedMonth: "archived month, from the history",
      kindCustomShort: "custom", loading: "loading…",
      adminToken: "Open this page as /admin#token=<QUOTA_ADMIN_TOKEN>: the token stays in this tab and never reaches the server's logs.",
      adminOnly: "This page needs the admin token (QUOTA_ADMIN_TOKEN).",
    },
    zh: {
      title: "Token 用量", thisMonth: "本月", cny: "元", remaining: "剩余额度", resets: "重置日期",
      held: "进行中的回复占用", available: "新消息可用额度",
      grantsLeft: "赠送/充值额度剩余", grants: "赠送/充值额度", grant: "额度", reason: "原因",
      grantLeft: "剩余（元）", grantAmount: "总额（元）", expires: "到期", never: "永不过期",
      grantsNote: "在本月额度用完后使用，先到期的先用；不随月份重置。",
      grantsInUse: "本月额度已用完：系统模型的新消息现在使用您的赠送/充值额度。",
      overNote: "本月系统模型额度已用完：在重置前，系统模型的新消息将被拒绝；自定义模型不受影响。",
      warnNote: "本月系统模型额度已用 {pct}%。", warnTitle: "额度提醒",
      cacheNote: "其中缓存命中 {cached}、缓存写入 {write}，按各自价格计费",
      byModel: "本月各模型用量", model: "模型", kind: "类型", input: "输入 tokens", output: "输出 tokens",
      calls: "调用次数", cost: "费用（元）", noCalls: "本月暂无调用。", history: "历史（按月）",
      month: "月份", systemCost: "系统模型", customCost: "自定义模型", systemCostCny: "系统模型费用（元）",
      customCostCny: "自定义模型费用（元）", noHistory: "暂无往月记录。", updated: "更新于",
      kindSystem: "系统", kindCustom: "自定义 · 仅计数，不限额", utc: "UTC",
      noToken: "请使用 `quota serve` 打印的链接打开本页，或访问 /panel#user=<用户>&token=<令牌>（用 `quota token <用户>` 生成）。",
      expired: "令牌已过期：请用 `quota token <用户>` 重新生成。",
      revoked: "此令牌已被撤销：请重新申请（`quota token <用户>`）。",
      denied: "此令牌无权查看该用户的统计。", offline: "服务暂时无法访问，正在重试…",
      live: "实时", demoUser: "演示", openPanel: "打开用量面板", demoTitle: "演示对话（模拟智能体）", user: "用户", send: "发送",
      placeholder: "输入消息…", demoIntro: "不会调用真实模型：每条消息产生一次对话、一次工具和一次摘要调用（首条消息另有一次命名调用），token 数为模拟值，但全部真实计费。",
      usedOf: "本月已用 {used} / {credit} 元（{kind}）", newChat: "新对话",
      callsLine: "{purpose}：输入 {in} / 输出 {out} tokens，{cost} 元", quotaTitle: "额度已用完",
      purpose_chat: "对话", purpose_tool: "工具", purpose_summary: "摘要", purpose_naming: "命名",
      adminTitle: "运营总览", refresh: "刷新", downloadCsv: "下载 CSV", totals: "汇总", users: "用户数",
      totalCost: "费用（元）", tokensInOut: "输入 / 输出 tokens", over80: "已用额度 ≥ 80% 的用户",
      over100: "已用完额度（被拒绝）", modelMix: "模型构成", share: "占比", noMonthCalls: "该月暂无调用。",
      topSpenders: "费用最高的用户", systemShort: "系统", customShort: "自定义",
      cachedShort: "缓存命中", cacheWriteShort: "缓存写入", nearCredit: "接近或超出额度",
      usedOfCredit: "已用 / 额度（元）", percent: "%", nobodyNear: "没有用户达到额度的 80%。",
      computed: "读取于", liveMonth: "当月（实时，来自 Redis）", archivedMonth: "往月（来自历史库）",
      kindCustomShort: "自定义", loading: "加载中…",
      adminToken: "请以 /admin#token=<QUOTA_ADMIN_TOKEN> 打开本页：令牌只保存在本标签页，不会进入服务器日志。",
      adminOnly: "本页需要管理员令牌（QUOTA_ADMIN_TOKEN）。",
    },
  };
  const lang = (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  const labels = LABELS[lang];
  function t(key, values) {
    let text = labels[key] || LABELS.en[key] || key;
    for (const [name, value] of Object.entries(values || {})) text = text.split("{" + name + "}").join(String(value));
    return text;
  }
  function apply(root) {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const el of (root || document).querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of (root || document).querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  function money(value, digits) { return Number(value).toFixed(digits === undefined ? 4 : digits); }
  function tokens(value) { return Number(value).toLocaleString("en-US"); }
  /* Parse "#a=1&b=2" (the fragment never reaches the server, so tokens stay out of its logs).
     Percent-escapes are decoded but "+" stays "+": URLSearchParams would read it as a space (the
     query-string rule), and user ids like "alice+work@corp.com" are valid. */
  function fragment() {
    const out = new Map();
    for (const part of location.hash.replace(/^#/, "").split("&")) {
      if (!part) continue;
      const at = part.indexOf("=");
      const key = at < 0 ? part : part.slice(0, at), value = at < 0 ? "" : part.slice(at + 1);
      try { out.set(decodeURIComponent(key), decodeURIComponent(value)); } catch (e) { /* a bad escape: skip it */ }
    }
    return out;
  }
  return { lang, t, apply, money, tokens, fragment };
})();
