// localproxy inspector: plain JavaScript, no library, nothing fetched from
// elsewhere. Records arrive as server-sent events; state is polled.
"use strict";
(function () {
  const token = document.querySelector('meta[name="inspector-token"]').content;
  const $ = (id) => document.getElementById(id);
  const records = new Map(); // id -> record
  let paused = false, queued = [], current = null;
  const views = { req: "text", resp: "text" };

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmtBytes(n) {
    if (n < 1024) return n + " B";
    const u = ["KiB", "MiB", "GiB", "TiB"]; let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return n.toFixed(1) + " " + u[i];
  }
  function fmtTime(t) { return new Date(t).toLocaleTimeString(); }

  // --- the request list -------------------------------------------------
  function matches(r) {
    const q = $("filter").value.trim().toLowerCase();
    const sc = $("status").value, kind = $("kind").value;
    if (kind && r.kind !== kind) return false;
    if (sc !== "" && String(Math.floor(r.status / 100)) !== sc) return false;
    if (!q) return true;
    return [r.method, r.host, r.path, r.service, r.client, r.transport, String(r.status), r.outcome]
      .some((v) => v && String(v).toLowerCase().includes(q));
  }
  function row(r) {
    const tr = el("tr", { id: "req-" + r.id, "data-id": r.id, "data-kind": r.kind, class: "k-" + r.kind + (r.detail ? " has-detail" : "") });
    const dir = { proxy: "→ out", public: "← in", replay: "↻ replay" }[r.kind] || r.kind;
    const where = r.kind === "proxy" ? r.host : (r.service ? r.service + " (" + r.host + ")" : r.host);
    const via = r.kind === "proxy" ? r.transport || "" : r.client || "";
    const cells = [fmtTime(r.time), dir, r.method, where, r.path || "", r.status ? String(r.status) : (r.done ? "–" : "…"),
      fmtBytes(r.bytes_up), fmtBytes(r.bytes_down), r.duration_ms.toFixed(1), via];
    const cls = ["time", "dir", "method", "host", "path", "status s" + Math.floor(r.status / 100), "up", "down", "ms", "via"];
    cells.forEach((c, i) => tr.appendChild(el("td", { class: cls[i], title: c }, c)));
    if (r.outcome && r.outcome !== "ok") tr.title = r.outcome;
    tr.hidden = !matches(r);
    if (r.detail) tr.addEventListener("click", () => openDetail(r.id));
    return tr;
  }
  function upsert(r) {
    records.set(r.id, r);
    const body = $("requests").tBodies[0];
    const old = document.getElementById("req-" + r.id);
    const tr = row(r);
    if (old) old.replaceWith(tr);
    else {
      // Newest first, by id: a record may arrive after newer ones (the
      // list loaded on connect races the events).
      let next = body.firstChild;
      while (next && Number(next.dataset.id) > r.id) next = next.nextSibling;
      body.insertBefore(tr, next);
    }
    while (body.rows.length > historyCap) { // the server keeps as many
      const last = body.rows[body.rows.length - 1];
      records.delete(Number(last.dataset.id));
      last.remove();
    }
    count();
  }
  let historyCap = 500;
  function count() {
    const body = $("requests").tBodies[0];
    let shown = 0;
    for (const tr of body.rows) if (!tr.hidden) shown++;
    $("count").textContent = shown + " of " + body.rows.length;
  }
  function refilter() {
    for (const tr of $("requests").tBodies[0].rows) tr.hidden = !matches(records.get(Number(tr.dataset.id)));
    count();
  }
  ["filter", "status", "kind"].forEach((id) => $(id).addEventListener("input", refilter));
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    live(paused ? "paused" : "on");
    if (!paused) { queued.forEach(upsert); queued = []; }
  });
  function live(s) {
    const b = $("live");
    b.className = "badge " + s;
    b.textContent = { on: "live", paused: "paused", off: "reconnecting…" }[s];
  }

  // loadAll adds the records kept that the page lacks; those the events
  // brought meanwhile are newer and stay.
  async function loadAll() {
    const res = await fetch("/ui/api/requests", { headers: { "X-Inspector-Token": token } });
    const list = await res.json();
    list.reverse().forEach((r) => { if (!records.has(r.id)) upsert(r); });
  }
  function connect() {
    const es = new EventSource("/ui/api/events");
    es.addEventListener("open", async () => { await loadAll(); live(paused ? "paused" : "on"); });
    es.addEventListener("record", (ev) => {
      const r = JSON.parse(ev.data);
      if (paused) queued.push(r); else upsert(r);
    });
    es.addEventListener("error", () => live("off"));
  }

  // --- state and chart ---------------------------------------------------
  function dl(id, pairs) {
    const d = $(id); d.replaceChildren();
    for (const [k, v] of pairs) { if (v === undefined || v === "") continue; d.appendChild(el("dt", {}, k)); d.appendChild(el("dd", {}, String(v))); }
  }
  async function loadState() {
    let s;
    try { s = await (await fetch("/ui/api/state")).json(); } catch (e) { return; }
    historyCap = s.history || historyCap;
    const st = s.state || {};
    dl("coord", [["address", st.coordinator], ["connected", st.connected ? "yes" : "NO (retrying)"], ["RTT", st.rtt],
      ["candidates", st.coordinators], ["failovers", st.coordinators ? st.failovers || 0 : undefined],
      ["transport", st.transport], ["sessions open", (st.sessions || []).length], ["sessions total", st.sessions_total],
      ["relayed", st.relay_sessions]]);
    dl("nat", [["public address", st.public_addr], ["seen by coordinator", st.observed_addr], ["mapping", st.nat_mapping], ["filtering", st.nat_filtering]]);
    const ul = $("services"); ul.replaceChildren();
    for (const svc of st.services || []) {
      const li = el("li");
      li.appendChild(el("b", {}, svc.name + " "));
      if (svc.url && /^https?:\/\//.test(svc.url)) { const a = el("a", { href: svc.url, target: "_blank", rel: "noopener noreferrer" }, svc.url); li.appendChild(a); }
      else if (svc.url) li.appendChild(document.createTextNode(svc.url));
      if (svc.error) li.appendChild(el("span", { class: "s5" }, " refused: " + svc.error));
      li.appendChild(el("span", { class: "mut" }, " → " + svc.local));
      ul.appendChild(li);
    }
    if (!ul.children.length) ul.appendChild(el("li", {}, "none"));
    drawChart(s.throughput || []);
  }
  function drawChart(samples) {
    const c = $("chart"), ctx = c.getContext("2d");
    const w = c.width = c.clientWidth || 560, h = c.height = 120;
    ctx.clearRect(0, 0, w, h);
    c.dataset.points = samples.length;
    const now = Math.floor(Date.now() / 1000);
    let peak = 1;
    for (const p of samples) peak = Math.max(peak, p.up, p.down);
    const x = (t) => w - ((now - t) / 300) * w, y = (v) => h - 14 - (v / peak) * (h - 24);
    ctx.strokeStyle = "#dcdfe4"; ctx.beginPath(); ctx.moveTo(0, h - 14); ctx.lineTo(w, h - 14); ctx.stroke();
    for (const [key, color] of [["down", "#1c7ed6"], ["up", "#d9480f"]]) {
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.beginPath();
      samples.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p[key])) : ctx.moveTo(x(p.t), y(p[key]))));
      ctx.stroke();
    }
    ctx.fillStyle = "#6b7078"; ctx.font = "11px sans-serif";
    ctx.fillText("peak " + fmtBytes(peak) + "/s", 4, 12);
    ctx.fillText("−5 min", 4, h - 2); ctx.fillText("now", w - 24, h - 2);
    c.title = samples.length + " samples";
  }

  // --- detail and replay -------------------------------------------------
  function b64bytes(s) { const bin = atob(s || ""); const b = new Uint8Array(bin.length); for (let i = 0; i < bin.length; i++) b[i] = bin.charCodeAt(i); return b; }
  function render(bytes, view) {
    if (view === "hex") {
      let out = "";
      for (let i = 0; i < bytes.length; i += 16) {
        const chunk = bytes.slice(i, i + 16);
        out += i.toString(16).padStart(6, "0") + "  " + Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ").padEnd(48) +
          "  " + Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("") + "\n";
      }
      return out;
    }
    const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
    if (view === "json") { try { return JSON.stringify(JSON.parse(text), null, 2); } catch (e) { return "(not JSON)\n" + text; } }
    return text;
  }
  function headersText(hs) { return (hs || []).map(([k, v]) => k + ": " + v).join("\n"); }
  function showBodies() {
    if (!current) return;
    $("r-body").value = render(b64bytes(current.request_body), views.req);
    $("resp-body").textContent = render(b64bytes(current.response_body), views.resp);
    document.querySelectorAll(".views").forEach((v) => v.querySelectorAll("button").forEach((b) => b.classList.toggle("on", b.dataset.view === views[v.dataset.for])));
  }
  document.querySelectorAll(".views button").forEach((b) => b.addEventListener("click", () => { views[b.parentNode.dataset.for] = b.dataset.view; showBodies(); }));
  async function openDetail(id) {
    const unmask = $("unmask").checked ? "?unmask=1" : "";
    const res = await fetch("/ui/api/requests/" + id + unmask, { headers: { "X-Inspector-Token": token } });
    if (!res.ok) return;
    const d = await res.json();
    current = d;
    $("detail").hidden = false;
    $("detail").dataset.id = id;
    $("detail-title").textContent = d.method + " " + (d.service || d.host) + d.path;
    $("r-method").value = d.method; $("r-path").value = d.path;
    $("r-headers").value = headersText(d.request_headers);
    $("resp-status").textContent = d.status ? String(d.status) : "";
    $("resp-headers").textContent = headersText(d.response_headers);
    $("r-cut").hidden = !d.request_body_cut; $("resp-cut").hidden = !d.response_body_cut;
    showBodies();
  }
  $("unmask").addEventListener("change", () => current && openDetail(current.id));
  $("close-detail").addEventListener("click", () => { $("detail").hidden = true; current = null; });
  async function replay(edited) {
    if (!current) return;
    const req = { id: current.id };
    if (edited) {
      req.method = $("r-method").value.trim(); req.path = $("r-path").value.trim();
      req.headers = $("r-headers").value.split("\n").filter((l) => l.includes(":")).map((l) => { const i = l.indexOf(":"); return [l.slice(0, i).trim(), l.slice(i + 1).trim()]; });
      if (views.req !== "hex") req.body = $("r-body").value;
    }
    $("replay-result").textContent = "sending…";
    const res = await fetch("/ui/api/replay", { method: "POST", headers: { "Content-Type": "application/json", "X-Inspector-Token": token }, body: JSON.stringify(req) });
    if (!res.ok) { $("replay-result").textContent = "failed: " + (await res.text()); return; }
    const out = await res.json();
    $("replay-result").textContent = "replayed: request #" + out.id;
    await openDetail(out.id);
  }
  $("replay").addEventListener("click", () => replay(false));
  $("replay-edited").addEventListener("click", () => replay(true));

  connect();
  loadState();
  setInterval(loadState, 2000);
})();
