/* The operator's view: one month's totals, model mix, top spenders and users near the credit, from
   GET /v1/admin/months/<month>/overview (and /users?format=csv), with the admin token. */
"use strict";
(function () {
  const I = window.QuotaI18n;
  const $ = (id) => document.getElementById(id);
  const TOP = 20, NEAR = 50;

  /* The admin token comes from the fragment once (#token=...; never sent to the server, so never in
     an access log), then lives in sessionStorage (this tab only); the fragment is wiped. */
  const params = I.fragment();
  if (params.get("token")) {
    sessionStorage.setItem("quota.admin-token", params.get("token"));
    history.replaceState(null, "", location.pathname + location.search + (params.get("month") ? "#month=" + params.get("month") : ""));
  }
  const token = sessionStorage.getItem("quota.admin-token");
  const now = new Date();
  const thisMonth = now.getUTCFullYear() + "-" + String(now.getUTCMonth() + 1).padStart(2, "0");
  const pick = $("month-pick");
  pick.value = /^\d{4}-\d{2}$/.test(params.get("month") || "") ? params.get("month") : thisMonth;
  pick.max = thisMonth;

  function alert(text) {
    $("alert").hidden = !text;
    $("alert").textContent = text || "";
  }

  function cell(row, text, cls, value) {
    const td = row.insertCell();
    td.textContent = text;
    if (cls) td.className = cls;
    if (value !== undefined) td.dataset.value = String(value);
    return td;
  }

  function fact(id, text, value) {
    $(id).textContent = text;
    $(id).dataset.value = String(value);
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    const data = await response.json();
    if (!response.ok) {
      const code = data && data.error && data.error.code;
      throw new Error(code === "forbidden" ? I.t("adminOnly") : code === "unauthorized" ? I.t("adminToken")
        : (data.error && data.error.message) || response.statusText);
    }
    return data;
  }

  function renderTotals(s) {
    fact("t-users", I.tokens(s.users), s.users);
    fact("t-cost", I.money(s.cost, 2), s.cost);
    fact("t-system", I.money(s.system_cost, 2), s.system_cost);
    fact("t-custom", I.money(s.custom_cost, 2), s.custom_cost);
    fact("t-calls", I.tokens(s.calls), s.calls);
    fact("t-tokens", I.tokens(s.input_tokens) + " / " + I.tokens(s.output_tokens), s.input_tokens + s.output_tokens);
    fact("t-over80", I.tokens(s.users_over_80), s.users_over_80);
    fact("t-over100", I.tokens(s.users_over_100), s.users_over_100);
    $("source").textContent = s.current ? I.t("liveMonth") : I.t("archivedMonth");
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  /* One horizontal bar per model, most expensive first, its length its share of the month's cost. */
  function renderMix(s) {
    const models = Object.entries(s.models);
    const chart = $("mix");
    chart.replaceChildren();
    const W = 640, rowH = 22, left = 150, right = 90;
    const H = Math.max(1, models.length) * rowH + 8;
    chart.setAttribute("viewBox", "0 0 " + W + " " + H);
    const max = Math.max(0.000001, ...models.map(([, m]) => m.cost));
    models.forEach(([id, m], i) => {
      const y = 4 + i * rowH, width = (m.cost / max) * (W - left - right);
      const g = svg("g", { class: "mix-row", "data-model": id });
      g.appendChild(svg("text", { x: left - 8, y: y + 14, "text-anchor": "end", class: "tick" }, id));
      g.appendChild(svg("rect", { x: left, y: y + 2, width: Math.max(width, 1), height: rowH - 6, class: m.is_system ? "sys" : "cus" }));
      g.appendChild(svg("text", { x: left + width + 6, y: y + 14, class: "tick" }, I.money(m.cost, 2)));
      g.appendChild(svg("title", {}, id + ": " + I.money(m.cost) + " " + I.t("cny")));
      chart.appendChild(g);
    });
    const body = $("models").tBodies[0];
    body.replaceChildren();
    for (const [id, m] of models) {
      const row = body.insertRow();
      row.dataset.model = id;
      cell(row, id, "model");
      cell(row, I.t(m.is_system ? "kindSystem" : "kindCustomShort"), "kind " + (m.is_system ? "tag-system" : "tag-custom"));
      cell(row, I.tokens(m.users), "num", m.users);
      cell(row, I.tokens(m.calls), "num", m.calls);
      cell(row, I.tokens(m.input_tokens), "num", m.input_tokens);
      cell(row, I.tokens(m.output_tokens), "num", m.output_tokens);
      cell(row, I.money(m.cost), "num", m.cost);
      const share = s.cost > 0 ? (m.cost / s.cost) * 100 : 0;
      cell(row, share.toFixed(1) + "%", "num", share);
    }
    $("models-empty").hidden = models.length > 0;
  }

  function renderTop(users) {
    const body = $("top").tBodies[0];
    body.replaceChildren();
    for (const u of users) {
      const row = body.insertRow();
      row.dataset.user = u.user;
      cell(row, u.user, "user");
      cell(row, I.money(u.cost), "num", u.cost);
      cell(row, I.money(u.system_cost), "num", u.system_cost);
      cell(row, I.money(u.custom_cost), "num", u.custom_cost);
      cell(row, I.tokens(u.calls), "num", u.calls);
      cell(row, I.tokens(u.cached_input_tokens), "num cache-hits", u.cached_input_tokens);  // tokens, of the input
      cell(row, I.tokens(u.cache_write_tokens), "num cache-writes", u.cache_write_tokens);
    }
  }

  function renderNear(near) {
    const body = $("near").tBodies[0];
    body.replaceChildren();
    for (const u of near) {
      const row = body.insertRow();
      row.dataset.user = u.user;
      row.className = u.exceeded ? "level-over" : "level-warn";
      cell(row, u.user, "user");
      cell(row, I.money(u.monthly_used, 2) + " / " + I.money(u.monthly_credit, 2) + (u.credit_set ? " *" : ""), "num", u.monthly_used);
      cell(row, u.percent_used + "%", "num pct", u.percent_used);
    }
    $("near-empty").hidden = near.length > 0;
  }

  function base() {
    return "/v1/admin/months/" + encodeURIComponent(pick.value);
  }

  async function load() {
    if (!pick.value) return;
    $("status").textContent = I.t("loading");
    try {
      /* one request, so one read of the month (each gunicorn worker keeps its own cache) */
      const overview = await api(base() + "/overview?top=" + TOP + "&near=" + NEAR);
      const summary = overview.summary;
      alert("");
      renderTotals(summary);
      renderMix(summary);
      renderTop(overview.top);
      renderNear(overview.near);
      $("updated").textContent = (summary.computed_at || "").replace("T", " ").replace("Z", " UTC");
      $("status").textContent = "";
      document.body.dataset.month = pick.value;
      document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
    } catch (err) {
      $("status").textContent = "";
      alert(err.message || I.t("offline"));
    }
  }

  /* The CSV needs the token in a header, which a plain link cannot send: fetch it, then hand the
     browser the file. */
  async function downloadCsv(event) {
    event.preventDefault();
    try {
      const response = await fetch(base() + "/users?format=csv", { headers: { Authorization: "Bearer " + token } });
      if (!response.ok) throw new Error(((await response.json()).error || {}).message || response.statusText);
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = "quota-" + pick.value + ".csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      alert(err.message || I.t("offline"));
    }
  }

  I.apply();
  document.title = I.t("adminTitle");
  if (!token) {
    alert(I.t("adminToken"));
    return;
  }
  pick.addEventListener("change", load);
  $("refresh").addEventListener("click", load);
  $("csv").addEventListener("click", downloadCsv);
  load();
})();
