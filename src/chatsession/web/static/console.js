"use strict";
// The chatsession console: plain DOM code, no library, no build step, no network but the
// server's own API. Model text only ever reaches the page through textContent.

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 10;
const state = {
  discarding: false,
  identity: "", admin: false, hold: true, me: null,
  socket: null, reply: null, replyText: "", reasoning: null,
  session: null, lastSessionId: null, sessionEndShown: null,
  archivesNext: null, query: "", timers: [],
};

// -- identity and the API ------------------------------------------------------------

function isToken(identity) { return identity.split(".").length === 3; }

function authQuery() {
  return (isToken(state.identity) ? "token=" : "userId=") + encodeURIComponent(state.identity);
}

function authHeaders() {
  if (isToken(state.identity)) return { authorization: `Bearer ${state.identity}` };
  const headers = { "x-user-id": state.identity };
  if (state.admin) headers["x-user-roles"] = "admin";
  return headers;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.status === 204) return null;
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }

function duration(seconds) {
  seconds = Math.max(0, Math.round(seconds));
  const m = Math.floor(seconds / 60), s = seconds % 60;
  return `${m}:${String(s).padStart(2, "0")}`;
}

// -- safe rendering: the text is never parsed as HTML ----------------------------------

function renderInline(parent, text) {
  // **bold**, *italic*, `code`, [label](http...): every piece is a text node.
  const pattern = /(\*\*[^*]+\*\*|`[^`]+`|\*[^*\s][^*]*\*|\[[^\]]+\]\(https?:\/\/[^\s)]+\))/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(text.slice(last, match.index));
    const token = match[0];
    if (token.startsWith("**")) parent.append(el("strong", token.slice(2, -2)));
    else if (token.startsWith("`")) parent.append(el("code", token.slice(1, -1)));
    else if (token.startsWith("[")) {
      const split = token.indexOf("](");
      const link = el("a", token.slice(1, split));
      link.href = token.slice(split + 2, -1);
      link.rel = "noopener noreferrer";
      link.target = "_blank";
      parent.append(link);
    } else parent.append(el("em", token.slice(1, -1)));
    last = match.index + token.length;
  }
  parent.append(text.slice(last));
}

function renderMarkdown(container, text) {
  container.replaceChildren();
  const trimmed = text.trim();
  if ((trimmed.startsWith("{") || trimmed.startsWith("[")) && trimmed.length > 1) {
    try {
      container.append(el("pre", JSON.stringify(JSON.parse(trimmed), null, 2), "json"));
      return;
    } catch (_) { /* not JSON: Markdown */ }
  }
  const parts = text.split(/```[^\n]*\n?/);
  parts.forEach((part, index) => {
    if (index % 2 === 1) { container.append(el("pre", part.replace(/\n$/, ""))); return; }
    for (const block of part.split(/\n{2,}/)) {
      if (!block.trim()) continue;
      const lines = block.split("\n");
      if (lines.every((l) => /^\s*[-*] /.test(l))) {
        const list = el("ul");
        for (const l of lines) { const item = el("li"); renderInline(item, l.replace(/^\s*[-*] /, "")); list.append(item); }
        container.append(list);
      } else if (/^#{1,6} /.test(block)) {
        const heading = el("p"); const strong = el("strong");
        renderInline(strong, block.replace(/^#{1,6} /, "")); heading.append(strong); container.append(heading);
      } else {
        const paragraph = el("p");
        lines.forEach((l, i) => { if (i) paragraph.append(el("br")); renderInline(paragraph, l); });
        container.append(paragraph);
      }
    }
  });
}

function renderMessage(container, message) {
  if (message.role === "user") { container.append(el("div", message.content, "user")); return null; }
  const div = el("div", undefined, "assistant");
  if (message.reasoning) {
    const details = el("details"); details.append(el("summary", "Reasoning"), el("pre", message.reasoning));
    container.append(details);
  }
  renderMarkdown(div, message.content);
  if (message.interrupted) div.classList.add("interrupted");
  container.append(div);
  return div;
}

// -- chat ------------------------------------------------------------------------------

function log(kind, text) { const div = el("div", text, kind); $("log").append(div); $("log").scrollTop = 1e9; return div; }

function setChatEnabled(enabled) {
  $("message").disabled = !enabled; $("send-button").disabled = !enabled;
  for (const id of ["end-session", "erase-me", "export-all"]) $(id).disabled = !enabled;
}

function openSocket() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws?${authQuery()}`);
  socket.addEventListener("message", (event) => onFrame(socket, JSON.parse(event.data)));
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return; // replaced on purpose (a new identity)
    state.socket = null;
    setChatEnabled(false);
    $("status").textContent = `Disconnected (${event.code}).`;
    refreshSession();
  });
  return socket;
}

function onFrame(socket, frame) {
  if (frame.type === "session") {
    state.socket = socket;
    setChatEnabled(true);
    $("status").textContent = "Connected.";
    refreshSession().then(() => { if (state.me && state.socket === socket) $("status").textContent = `Connected as ${state.me}.`; });
  } else if (socket !== state.socket) {
    return;
  } else if (state.discarding && (frame.type === "response" || frame.type === "reasoning" || frame.type === "done")) {
    return;
  } else if (frame.type === "response") {
    if (!state.reply) { state.reply = log("assistant", ""); state.replyText = ""; }
    state.replyText += frame.content;
    renderMarkdown(state.reply, state.replyText);
    $("log").scrollTop = 1e9;
  } else if (frame.type === "reasoning") {
    if (!state.reasoning) {
      state.reasoning = el("details"); state.reasoning.append(el("summary", "Reasoning"), el("pre", ""));
      $("log").append(state.reasoning);
    }
    state.reasoning.querySelector("pre").textContent += frame.content;
  } else if (frame.type === "done") {
    finishReply(false);
  } else if (frame.type === "error") {
    finishReply(false); log("error", frame.message);
  } else if (frame.type === "session_event") {
    onSessionEvent(frame);
  }
}

function finishReply(interrupted) {
  if (interrupted && state.reply) state.reply.classList.add("interrupted");
  state.reply = null; state.reasoning = null; state.replyText = "";
  $("stop-button").disabled = true;
}

function stopReply() {
  // The server stops the reply and stores it as far as it got, marked interrupted; chunks
  // already on their way are dropped until the next message.
  finishReply(true);
  state.discarding = true;
  if (state.socket) state.socket.send(JSON.stringify({ type: "stop" }));
}

async function send(text) {
  const jsonOutput = $("json-output").checked, reasoningEnabled = $("reasoning").checked;
  log("user", text);
  if (state.socket) {
    state.discarding = false;
    $("stop-button").disabled = false;
    state.socket.send(JSON.stringify({ text, jsonOutput, reasoningEnabled }));
    return;
  }
  try {
    const body = await api("/chat", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ message: text, jsonOutput, reasoningEnabled }),
    });
    renderMarkdown(log("assistant", ""), body.response);
  } catch (error) { log("error", error.message); }
  refreshSession();
}

// -- the session -----------------------------------------------------------------------

function onSessionEvent(frame) {
  if (frame.event === "session_ended") {
    showEnded(frame.sessionId, frame.reason, frame.archiveId);
    loadArchives(true, frame.archiveId);
  }
  refreshSession();
}

function showEnded(sessionId, reason, archiveId) {
  if (state.sessionEndShown === sessionId) return;
  state.sessionEndShown = sessionId;
  const notice = $("session-ended");
  notice.textContent = `Session ended: ${reason || "unknown"}.` + (archiveId ? ` Archived as ${archiveId}.` : " Nothing to archive.");
  notice.hidden = false;
}

async function refreshSession() {
  if (!state.identity) return;
  let body;
  try { body = await api("/session"); } catch (error) { $("status").textContent = error.message; return; }
  state.me = body.userId;
  const previous = state.session;
  state.session = body.session;
  if (body.session) {
    state.lastSessionId = body.session.sessionId;
    if (state.sessionEndShown === body.session.sessionId) state.sessionEndShown = null;
    $("session-ended").hidden = previous ? $("session-ended").hidden : true;
  } else if (previous) {
    // Ended while nobody was connected to say why: the newest archive of that session tells.
    const listing = await api(`/archives?limit=1`);
    const newest = listing.archives[0];
    if (newest && newest.sessionId === previous.sessionId) showEnded(previous.sessionId, newest.endReason, newest.archiveId);
    else showEnded(previous.sessionId, null, null);
    loadArchives(true, newest && newest.archiveId);
  }
  drawSession();
}

function drawSession() {
  const s = state.session;
  $("session-id").textContent = s ? s.sessionId : "none";
  $("session-started").textContent = s ? when(s.startedAt) : "–";
  $("session-activity").textContent = s ? when(s.lastActivity) : "–";
  $("session-connections").textContent = s ? String(s.connections) : "0";
  tickCountdown();
}

function tickCountdown() {
  const s = state.session, out = $("session-countdown");
  if (!s) { out.textContent = "–"; return; }
  if (!s.expiresAt) { out.textContent = `not while connected (after ${duration(s.timeoutSeconds)} idle otherwise)`; return; }
  const left = (new Date(s.expiresAt) - Date.now()) / 1000;
  out.textContent = left > 0 ? `in ${duration(left)}` : "now (0:00)";
  if (left <= 0 && !state.expiryChecked) { state.expiryChecked = true; setTimeout(() => { state.expiryChecked = false; refreshSession(); }, 500); }
}

async function endSession() {
  try {
    const body = await api("/session", { method: "DELETE" });
    if (body.ended) showEnded(state.lastSessionId, "manual", body.archiveId);
    loadArchives(true, body.archiveId);
    refreshSession();
  } catch (error) { log("error", error.message); }
}

// -- archives --------------------------------------------------------------------------

async function loadArchives(reset, highlight) {
  if (!state.identity) return;
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (!reset && state.archivesNext) params.set("before", state.archivesNext);
  if (state.query) params.set("q", state.query);
  let body;
  try { body = await api(`/archives?${params}`); } catch (error) { log("error", error.message); return; }
  const list = $("archives");
  if (reset) list.replaceChildren();
  for (const archive of body.archives) list.append(archiveItem(archive, archive.archiveId === highlight));
  if (reset && !body.archives.length) list.append(el("li", state.query ? "No archive matches." : "No archives yet.", "note"));
  state.archivesNext = body.next;
  $("more-archives").hidden = !body.next;
}

function archiveItem(archive, fresh) {
  const item = el("li");
  item.dataset.archiveId = archive.archiveId;
  if (fresh) item.classList.add("fresh");
  const title = el("strong", when(archive.endedAt || archive.startedAt));
  const meta = el("span", ` · ${archive.endReason || "–"} · ${archive.messageCount} messages`, "note");
  const first = el("span", archive.firstWords || "", "first");
  const actions = el("div", undefined, "actions");
  const button = (label, handler) => {
    const b = el("button", label); b.type = "button";
    b.setAttribute("aria-label", `${label} archive ${archive.archiveId}`);
    b.addEventListener("click", handler); actions.append(b);
  };
  button("Open", () => openArchive(archive.archiveId));
  button("Export", () => exportArchives(archive.archiveId));
  button("Delete", () => deleteArchive(archive.archiveId, item));
  item.append(title, meta, first, actions);
  return item;
}

async function openArchive(archiveId) {
  const body = await api(`/dialogs/${encodeURIComponent(archiveId)}`);
  const dialog = body.dialog;
  $("archive-title").textContent = `Archive ${archiveId}`;
  $("archive-meta").textContent = `${when(dialog.startedAt)} – ${when(dialog.endedAt)}, ended by ${dialog.endReason || "–"}`;
  const messages = $("archive-messages");
  messages.replaceChildren(); messages.className = "messages";
  for (const message of dialog.messages) renderMessage(messages, message);
  $("archive-view").hidden = false;
  $("close-archive").focus();
}

async function exportArchives(archiveId) {
  const format = $("export-format").value;
  const params = new URLSearchParams({ format });
  if (archiveId) params.set("archiveId", archiveId);
  const response = await fetch(`/archives/export?${params}`, { headers: authHeaders() });
  if (!response.ok) { log("error", (await response.json()).error); return; }
  const name = /filename="([^"]+)"/.exec(response.headers.get("content-disposition") || "")?.[1] || "archives";
  const link = el("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = name;
  document.body.append(link); link.click(); link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

async function deleteArchive(archiveId, item) {
  if (!confirm(`Delete archive ${archiveId}? This cannot be undone.`)) return;
  try { await api(`/dialogs/${encodeURIComponent(archiveId)}`, { method: "DELETE" }); item.remove(); }
  catch (error) { log("error", error.message); }
  loadArchives(true);
  if ($("archive-title").textContent === `Archive ${archiveId}`) $("archive-view").hidden = true;
}

// -- erase me --------------------------------------------------------------------------

async function eraseMe() {
  $("erase-dialog").close();
  const me = state.me || state.identity;
  try {
    const body = await api(`/users/${encodeURIComponent(me)}`, { method: "DELETE" });
    $("erase-result").textContent = `Erased: ${body.archivesRemoved} archives` +
      (body.currentDialogRemoved ? " and the current dialog" : "") + (body.sessionEnded ? "; the session ended." : ".");
    $("log").replaceChildren();
    $("archive-view").hidden = true;
    loadArchives(true);
    refreshSession();
  } catch (error) { $("erase-result").textContent = error.message; }
}

// -- admin -----------------------------------------------------------------------------

async function refreshAdmin() {
  let body;
  try { body = await api("/sessions"); } catch (_) { $("admin").hidden = true; return false; }
  $("admin").hidden = false;
  const rows = body.sessions.map((s) => {
    const row = el("tr");
    row.dataset.userId = s.userId;
    const idle = (Date.now() - new Date(s.lastActivity)) / 1000;
    for (const text of [s.userId, when(s.startedAt), duration(idle), String(s.connections), s.instance || "–"]) row.append(el("td", text));
    const cell = el("td"), end = el("button", "End");
    end.type = "button"; end.setAttribute("aria-label", `End the session of ${s.userId}`);
    end.addEventListener("click", async () => { await api(`/sessions/${encodeURIComponent(s.userId)}`, { method: "DELETE" }); refreshAdmin(); });
    cell.append(end); row.append(cell);
    return row;
  });
  $("admin-sessions").querySelector("tbody").replaceChildren(...rows);
  return true;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes) { const node = document.createElementNS(SVG, tag); for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v)); return node; }

function barChart(target, series, label) {
  // series: [{values: [...], color}] stacked per minute; drawn as inline SVG.
  const width = 600, height = 120, count = series[0].values.length;
  const totals = series[0].values.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const top = Math.max(1, ...totals);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height + 14}`, role: "img", "aria-label": label });
  const step = width / count;
  for (let i = 0; i < count; i++) {
    let y = height;
    for (const s of series) {
      const h = ((s.values[i] || 0) / top) * height;
      if (h > 0) { chart.append(svg("rect", { x: i * step + 1, y: y - h, width: Math.max(1, step - 2), height: h, fill: s.color })); y -= h; }
    }
  }
  chart.append(svg("line", { x1: 0, y1: height, x2: width, y2: height, stroke: "#999" }));
  const caption = svg("text", { x: 0, y: height + 12, "font-size": 10, fill: "#555" });
  caption.textContent = `max ${Math.round(top * 100) / 100} · 60 min ago → now`;
  chart.append(caption);
  target.replaceChildren(chart);
}

async function refreshStats() {
  if ($("admin").hidden) return;
  const stats = await api("/admin/stats");
  const minutes = stats.minutes;
  const reasons = [...new Set(minutes.flatMap((m) => Object.keys(m.ended)))];
  const colors = ["#b23a48", "#e09f3e", "#6d597a", "#335c67", "#9e2a2b", "#555"];
  barChart($("chart-sessions"), [
    { values: minutes.map((m) => m.started), color: "#2a9d8f" },
    ...reasons.map((r, i) => ({ values: minutes.map((m) => m.ended[r] || 0), color: colors[i % colors.length] })),
  ], `Sessions started (green) and ended by ${reasons.join(", ") || "no reason yet"}`);
  barChart($("chart-latency"), [{ values: minutes.map((m) => (m.archiveMeanSeconds || 0) * 1000), color: "#1f5fbf" }], "Mean archive latency per minute, ms");
}

// -- wiring ----------------------------------------------------------------------------

function start() {
  state.identity = $("identity").value.trim();
  state.admin = $("admin-role").checked;
  state.hold = $("hold-session").checked;
  for (const timer of state.timers) clearInterval(timer);
  if (state.socket) { const old = state.socket; state.socket = null; old.close(1000); }
  $("log").replaceChildren();
  if (state.hold) openSocket();
  else { setChatEnabled(true); $("status").textContent = `Chatting over HTTP as ${state.identity}.`; }
  refreshSession();
  loadArchives(true);
  refreshAdmin().then((admin) => { if (admin) refreshStats(); });
  state.timers = [
    setInterval(refreshSession, 2000),
    setInterval(tickCountdown, 250),
    setInterval(() => { if (!$("admin").hidden) refreshAdmin(); }, 2000),
    setInterval(refreshStats, 10000),
  ];
}

$("connect").addEventListener("submit", (event) => { event.preventDefault(); start(); });
$("send").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (!text.trim()) return;
  $("message").value = "";
  send(text);
});
$("stop-button").addEventListener("click", stopReply);
$("end-session").addEventListener("click", endSession);
$("search").addEventListener("submit", (event) => { event.preventDefault(); state.query = $("search-input").value.trim(); loadArchives(true); });
$("more-archives").addEventListener("click", () => loadArchives(false));
$("export-all").addEventListener("click", () => exportArchives(null));
$("close-archive").addEventListener("click", () => { $("archive-view").hidden = true; });
$("erase-me").addEventListener("click", () => $("erase-dialog").showModal());
$("erase-cancel").addEventListener("click", () => $("erase-dialog").close());
$("erase-confirm").addEventListener("click", eraseMe);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("stop-button").disabled) stopReply();
});
