/* The token statistics panel: polls GET /v1/users/<user>/token-stats with the user's token. */
"use strict";
(function () {
  const I = window.QuotaI18n;
  const $ = (id) => document.getElementById(id);
  const refreshMs = Math.max(1, Number(document.body.dataset.refreshS) || 5) * 1000;

  /* The user and token come from the fragment once, then live in sessionStorage (this tab only),
     and the fragment is wiped from the address bar so the token is not left in history.
     #demo=1&user=demo-x follows a user of the demo chat instead: no token, the demo's own stats
     route (demo users live under their own key prefix, apart from real users). */
  const params = I.fragment();
  /* A host app serving the panel on its own login (quota.contrib.django) names the stats URL on
     <body data-stats-url>: its session cookie authenticates, no token is read or kept. */
  const session = document.body.dataset.statsUrl;
  const demo = !session && params.get("demo") === "1";
  if (!session && !demo && params.get("token")) {
    sessionStorage.setItem("quota.user", params.get("user") || "");
    sessionStorage.setItem("quota.token", params.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const user = session ? document.body.dataset.user : demo ? params.get("user") : sessionStorage.getItem("quota.user");
  const token = session || demo ? null : sessionStorage.getItem("quota.token");
  const statsUrl = session || (demo ? "/demo/users/" : "/v1/users/") + encodeURIComponent(user || "") + "/token-stats";

  function alert(text) {
    const box = $("alert");
    box.hidden = !text;
    box.textContent = text || "";
  }

  function level(percent, exceeded) {
    if (exceeded || percent >= 100) return "level-over";
    if (percent >= 80) return "level-warn";
    return "level-ok";
  }

  function cell(row, text, cls, value) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    if (value !== undefined) td.dataset.value = String(value);
    return td;
  }

  function renderMonth(s) {
    $("month").textContent = s.current_month + " (" + I.t("utc") + ")";
    const pct = Number(s.percent_used);
    const fill = $("bar-fill");
    fill.style.width = Math.min(pct, 100) + "%";
    const bar = $("bar");
    bar.className = "bar " + level(pct, s.exceeded);
    bar.setAttribute("aria-valuenow", String(Math.min(pct, 100)));
    $("percent").textContent = pct + "%";
    $("percent").dataset.value = String(pct);
    $("used").textContent = I.money(s.monthly_used);
    $("used").dataset.value = String(s.monthly_used);
    $("credit").textContent = I.money(s.monthly_credit, 2);
    $("credit").dataset.value = String(s.monthly_credit);
    $("remaining").textContent = I.money(s.remaining);
    $("remaining").dataset.value = String(s.remaining);
    /* The held part of the credit (turn holds of replies in progress) follows the spent part. */
    const credit = Number(s.monthly_credit);
    const heldPct = credit > 0 ? Math.max(0, Math.min(Number(s.held) / credit * 100, 100 - Math.min(pct, 100))) : 0;
    $("bar-held").style.width = heldPct + "%";
    $("bar-held").dataset.value = String(s.held);
    $("held").textContent = I.money(s.held);
    $("held").dataset.value = String(s.held);
    $("available").textContent = I.money(s.available);
    $("available").dataset.value = String(s.available);
    $("resets").textContent = s.resets_at.slice(0, 10) + " 00:00 " + I.t("utc");
    $("resets").dataset.value = s.resets_at;
    /* Past the month's credit, live grants (issue 12) still pay: the user is not refused yet. */
    const onGrants = s.exceeded && Number(s.grants_remaining || 0) > 0;
    $("over-note").hidden = !s.exceeded || onGrants;
    $("grants-note").hidden = !onGrants;
    /* A threshold alert (80% by default) reached this month and not yet cleared by a credit raise. */
    const alerted = s.alerted_threshold;
    $("warn-note").hidden = !alerted || s.exceeded;
    $("warn-note").textContent = alerted ? I.t("warnNote", { pct: alerted }) : "";
    $("warn-note").dataset.value = alerted ? String(alerted) : "";
  }

  function renderModels(s) {
    const body = $("models").tBodies[0];
    body.replaceChildren();
    for (const [id, m] of Object.entries(s.models)) {
      const row = body.insertRow();
      row.dataset.model = id;
      row.className = m.is_system ? "system" : "custom";
      const name = cell(row, id, "model");
      if (m.name && m.name !== id) name.title = m.name;
      cell(row, I.t(m.is_system ? "kindSystem" : "kindCustom"), "kind " + (m.is_system ? "tag-system" : "tag-custom"));
      const input = cell(row, I.tokens(m.input_tokens), "num", m.input_tokens);
      /* Cache hits and writes are parts of the input, priced at their own rates: a small mark and a tooltip. */
      if (m.cached_input_tokens || m.cache_write_tokens) {
        input.title = I.t("cacheNote", { cached: I.tokens(m.cached_input_tokens), write: I.tokens(m.cache_write_tokens) });
        input.dataset.cached = String(m.cached_input_tokens);
        input.dataset.cacheWrite = String(m.cache_write_tokens);
        input.classList.add("cached");
      }
      cell(row, I.tokens(m.output_tokens), "num", m.output_tokens);
      cell(row, I.tokens(m.calls), "num", m.calls);
      cell(row, I.money(m.cost), "num", m.cost);
      /* Calls and cost by purpose (chat, tool, summary, naming...), one small line under the model. */
      const purposes = Object.entries(m.purposes || {});
      if (purposes.length) {
        const line = body.insertRow();
        line.className = "purposes";
        line.dataset.purposesOf = id;
        const td = cell(line, purposes.map(([p, u]) => p + " " + I.tokens(u.calls) + " · " + I.money(u.cost)).join("   "), "purposes");
        td.colSpan = row.cells.length;
        td.dataset.value = JSON.stringify(m.purposes);
      }
    }
    $("models-empty").hidden = Object.keys(s.models).length > 0;
  }

  /* Credit grants (issue 12): live ones first, in the order they are spent; the card shows only when there are any. */
  function renderGrants(s) {
    const grants = s.grants || [];
    const body = $("grants").tBodies[0];
    body.replaceChildren();
    for (const g of grants) {
      const row = body.insertRow();
      row.dataset.grant = g.grant_id;
      row.className = g.live ? "live" : "spent";
      cell(row, g.grant_id);
      cell(row, g.reason || "");
      cell(row, I.money(g.remaining), "num", g.remaining);
      cell(row, I.money(g.amount), "num", g.amount);
      cell(row, g.expires_at ? g.expires_at.slice(0, 16).replace("T", " ") + " " + I.t("utc") : I.t("never"), "", g.expires_at || "");
    }
    $("grants-card").hidden = grants.length === 0;
    $("grants-fact").hidden = grants.length === 0;
    $("grants-left").textContent = I.money(s.grants_remaining || 0);
    $("grants-left").dataset.value = String(s.grants_remaining || 0);
  }

  /* One row per month: totals, with system (credit-bearing) and custom cost apart. */
  function monthTotals(models) {
    const t = { input: 0, output: 0, calls: 0, system: 0, custom: 0 };
    for (const m of Object.values(models)) {
      t.input += m.input; t.output += m.output; t.calls += m.calls;
      if (m.is_system) t.system += m.cost; else t.custom += m.cost;
    }
    return t;
  }

  function renderHistory(s) {
    const months = Object.keys(s.history).sort().reverse();
    const body = $("history").tBodies[0];
    body.replaceChildren();
    const totals = {};
    for (const month of months) {
      const t = (totals[month] = monthTotals(s.history[month]));
      const row = body.insertRow();
      row.dataset.month = month;
      cell(row, month);
      cell(row, I.tokens(t.input), "num", t.input);
      cell(row, I.tokens(t.output), "num", t.output);
      cell(row, I.tokens(t.calls), "num", t.calls);
      cell(row, I.money(t.system), "num", t.system);
      cell(row, I.money(t.custom), "num", t.custom);
    }
    $("history-empty").hidden = months.length > 0;
    renderChart(months.slice().reverse(), totals);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /* A stacked bar per month (oldest left): system cost below, custom cost above. */
  function renderChart(months, totals) {
    const chart = $("chart");
    chart.replaceChildren();
    const W = 640, H = 220, left = 48, bottom = 28, top = 12;
    const max = Math.max(0.0001, ...months.map((m) => totals[m].system + totals[m].custom));
    const plotH = H - top - bottom;
    chart.appendChild(svg("line", { x1: left, y1: H - bottom, x2: W - 8, y2: H - bottom, class: "axis" }));
    chart.appendChild(svg("text", { x: left - 6, y: top + 4, "text-anchor": "end", class: "tick" }, I.money(max, 2)));
    chart.appendChild(svg("text", { x: left - 6, y: H - bottom, "text-anchor": "end", class: "tick" }, "0"));
    if (!months.length) return;
    const slot = (W - left - 8) / months.length;
    const width = Math.min(48, slot * 0.6);
    months.forEach((month, i) => {
      const t = totals[month];
      const x = left + i * slot + (slot - width) / 2;
      const hs = (t.system / max) * plotH, hc = (t.custom / max) * plotH;
      const g = svg("g", { class: "bar-group", "data-month": month });
      g.appendChild(svg("rect", { x, y: H - bottom - hs, width, height: hs, class: "sys" }));
      g.appendChild(svg("rect", { x, y: H - bottom - hs - hc, width, height: hc, class: "cus" }));
      g.appendChild(svg("title", {}, month + ": " + I.money(t.system + t.custom) + " " + I.t("cny")));
      g.appendChild(svg("text", { x: x + width / 2, y: H - 10, "text-anchor": "middle", class: "tick" }, month));
      chart.appendChild(g);
    });
  }

  async function load() {
    try {
      const response = await fetch(statsUrl, {
        headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store",
      });
      const data = await response.json();
      if (!response.ok) {
        const code = data && data.error && data.error.code;
        alert(code === "token_expired" ? I.t("expired") : code === "token_revoked" ? I.t("revoked")
          : code === "forbidden" ? I.t("denied")
          : (data.error && data.error.message) || response.statusText);
        if (response.status >= 400 && response.status < 500) return; // no point polling on
      } else {
        alert("");
        renderMonth(data);
        renderModels(data);
        renderGrants(data);
        renderHistory(data);
        $("updated").textContent = new Date().toLocaleTimeString(I.lang === "zh" ? "zh-CN" : "en-GB");
        $("status").textContent = I.t("live");
        document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
      }
    } catch (err) {
      alert(I.t("offline"));
    }
    setTimeout(load, refreshMs);
  }

  I.apply();
  document.title = I.t("title");
  if (!user || (!demo && !session && !token)) {
    alert(I.t("noToken"));
    return;
  }
  $("who").textContent = demo ? user + " · " + I.t("demoUser") : user;
  load();
})();
