/* The demo chat: each message is one POST /demo/turn; the server checks the quota, then meters the
   simulated agent's calls. A refused turn shows the quota_exceeded notice instead of a reply. */
"use strict";
(function () {
  const I = window.QuotaI18n;
  const $ = (id) => document.getElementById(id);
  let conversation = newId();
  let turn = 1;

  function newId() {
    const bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function bubble(kind, text) {
    const li = document.createElement("li");
    li.className = "msg " + kind;
    const p = document.createElement("p");
    p.textContent = text;
    li.appendChild(p);
    $("chat").appendChild(li);
    li.scrollIntoView({ block: "end" });
    return li;
  }

  function showUsage(used, credit, isSystem) {
    $("usage").textContent = I.t("usedOf", {
      used: I.money(used), credit: I.money(credit, 2), kind: I.t(isSystem ? "kindSystem" : "kindCustom"),
    });
  }

  function showReply(data) {
    const li = bubble("assistant", data.reply);
    const ul = document.createElement("ul");
    ul.className = "calls";
    for (const c of data.calls) {
      const item = document.createElement("li");
      item.dataset.purpose = c.purpose;
      item.textContent = I.t("callsLine", {
        purpose: I.t("purpose_" + c.purpose), in: I.tokens(c.input_tokens), out: I.tokens(c.output_tokens), cost: I.money(c.cost),
      });
      ul.appendChild(item);
    }
    li.appendChild(ul);
    showUsage(data.monthly_used, data.monthly_credit, data.is_system);
  }

  /* A call of the reply crossed an alert threshold (80%, 100% of the credit): the server's
     quota_warning event, shown at once under the reply. */
  function showWarning(event) {
    const li = bubble("notice quota-warning", event.message);
    const title = document.createElement("strong");
    title.textContent = I.t("warnTitle");
    li.prepend(title);
    li.dataset.threshold = String(event.threshold);
  }

  function showQuotaExceeded(event) {
    const li = bubble("notice quota-exceeded", event.message);
    const title = document.createElement("strong");
    title.textContent = I.t("quotaTitle");
    li.prepend(title);
    li.dataset.resetsAt = event.resets_at;
    showUsage(event.monthly_used, event.monthly_credit, true);
  }

  async function send(event) {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text || !$("settings").reportValidity()) return;
    $("send").disabled = true;
    bubble("user", text);
    $("message").value = "";
    try {
      const response = await fetch("/demo/turn", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ user: $("user").value, model_id: $("model").value, conversation_id: conversation, turn, message: text }),
      });
      const data = await response.json();
      if (!response.ok) {
        bubble("notice error", (data.error && data.error.message) || response.statusText);
      } else if (data.type === "quota_exceeded") {
        showQuotaExceeded(data.event); // nothing was recorded; the same turn number may be retried
      } else {
        showReply(data);
        for (const warning of data.warnings || []) showWarning(warning);
        turn += 1;
      }
    } catch (err) {
      bubble("notice error", I.t("offline"));
    } finally {
      $("send").disabled = false;
      document.body.dataset.turns = String(Number(document.body.dataset.turns || 0) + 1);
    }
  }

  function restart() {
    conversation = newId();
    turn = 1;
    $("chat").replaceChildren();
    $("usage").textContent = "";
    $("panel-link").href = "/panel#demo=1&user=" + encodeURIComponent($("user").value);
  }

  I.apply();
  document.title = I.t("demoTitle");
  const user = I.fragment().get("user");
  if (user) $("user").value = user;
  // The settings form is never sent (Enter in the user field would reload the page): it was an
  // inline onsubmit="return false", which the Content-Security-Policy forbids.
  $("settings").addEventListener("submit", (e) => e.preventDefault());
  $("composer").addEventListener("submit", send);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("new-chat").addEventListener("click", restart);
  $("user").addEventListener("change", restart);
  $("panel-link").href = "/panel#demo=1&user=" + encodeURIComponent($("user").value);
})();
