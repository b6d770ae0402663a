// The operator page's script (assets/operator.html), served as
// /operator/app.<hash>.js so that the page's Content-Security-Policy needs no
// 'unsafe-inline'. It sets no inline style attributes and writes no HTML
// (textContent, className and the hidden property only), which the policy
// would block or which would open the page to injection.
"use strict";
// The screen's token comes from the URL fragment (#token=T: never sent to
// the server, so never in its logs), else from local storage; a token in the
// fragment wins.
//
// Sequence numbers are per operator key and start again at 1 when the
// gateway restarts, so a seq means something only within one gateway run.
// The page keeps the last seq it saw (lastSeq) to reconnect with
// after=<lastSeq> and get what it missed; it de-duplicates only within one
// connection (connectionSeq). A new connection may answer with lower numbers
// (the gateway restarted: it replays its new run from seq 1): those are
// shown, and lastSeq follows them. A token change forgets lastSeq, since the
// new token may be another operator's, with numbers of its own.
const STORE_KEY = "cti-gateway.operator-token";
const statusEl = document.getElementById("status");
const loginEl = document.getElementById("login");
const loginError = document.getElementById("login-error");
const callsEl = document.getElementById("calls");
const emptyEl = document.getElementById("empty");
let token = null;
// The last seq shown, on the gateway run the page last heard from.
let lastSeq = null;
// The last seq shown on the current connection; null until its first message.
let connectionSeq = null;
let socket = null;
// Bumped by every disconnect, so a connect overtaken while it checked the
// token (by another connect, or the login form) gives up instead of opening
// a second socket.
let attempt = 0;
let retryDelay = 1000;
let retryTimer = null;

function setStatus(text, cls) {
  statusEl.textContent = text;
  statusEl.className = cls || "";
}

// The `token` parameter of the fragment, percent-decoded. Not read with
// URLSearchParams, which turns `+` into a space: tokens made by
// `openssl rand -base64` have `+` in them, written as is or as %2B.
function tokenFromFragment() {
  for (const part of location.hash.replace(/^#/, "").split("&")) {
    if (!part.startsWith("token=")) continue;
    const raw = part.slice("token=".length);
    try { return decodeURIComponent(raw); } catch (e) { return raw; }
  }
  return null;
}

// Closes the current connection (if any) without the reconnect its close
// would otherwise start, and cancels a pending reconnect.
function disconnect() {
  attempt++;
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  clearTimeout(retryTimer);
}

// A new token: connect with it, and forget the numbers seen with the old one.
function useToken(value) {
  token = value;
  lastSeq = null;
  retryDelay = 1000;
  localStorage.setItem(STORE_KEY, token);
  loginEl.hidden = true;
  connect();
}

function askForToken(message) {
  disconnect();
  loginEl.hidden = false;
  loginError.hidden = !message;
  loginError.textContent = message || "";
  document.getElementById("token").focus();
}

loginEl.addEventListener("submit", (e) => {
  e.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) return;
  useToken(value);
});

function field(dl, label, value) {
  if (value === undefined || value === null || value === "" ||
      (Array.isArray(value) && value.length === 0)) return;
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = Array.isArray(value) ? value.join(", ") : String(value);
  dl.append(dt, dd);
}

function showCall(msg) {
  if (typeof msg.seq === "number") {
    // Within one connection the numbers only grow; across connections the
    // gateway sends only what is after `after`, or a new run from seq 1.
    if (connectionSeq !== null && msg.seq <= connectionSeq) return; // already shown
    connectionSeq = msg.seq;
    lastSeq = msg.seq;
  }
  const c = msg.counterparty;
  const card = document.createElement("article");
  card.className = "card latest" + (c ? "" : " unknown");
  card.dataset.seq = msg.seq;
  const time = document.createElement("time");
  time.dateTime = msg.at || "";
  time.textContent = msg.at ? new Date(msg.at).toLocaleTimeString("ru-RU") : "";
  const title = document.createElement("h2");
  title.textContent = c ? c.name : "Неизвестный номер " + (msg.number || msg.raw_number || "");
  const dl = document.createElement("dl");
  field(dl, "Номер", msg.number || msg.raw_number);
  if (c) {
    field(dl, "ИНН", c.inn);
    field(dl, "КПП", c.kpp);
    field(dl, "Категория", c.category);
    field(dl, "Менеджер (доб.)", c.manager_phone);
    field(dl, "Телефоны", c.phones);
    field(dl, "E-mail", c.emails);
  }
  card.append(time, title, dl);
  for (const old of callsEl.querySelectorAll(".card.latest")) old.classList.remove("latest");
  callsEl.prepend(card);
  emptyEl.hidden = true;
}

// A WebSocket refused with 401 only shows as a closed socket, so the token
// is checked with one immediate long-poll request first.
async function tokenIsAccepted() {
  try {
    const r = await fetch("/operator/events?wait=0&after=" + (lastSeq || 0) +
                          "&token=" + encodeURIComponent(token), { cache: "no-store" });
    if (r.status === 401) return false;
    return true;
  } catch (e) {
    return true; // the server is unreachable: let the reconnect loop say so
  }
}

async function connect() {
  disconnect();
  const mine = attempt;
  setStatus("подключение…", "retrying");
  const accepted = await tokenIsAccepted();
  if (mine !== attempt) return; // overtaken: the newer attempt connects
  if (!accepted) {
    setStatus("токен не принят", "refused");
    localStorage.removeItem(STORE_KEY);
    askForToken("Сервер не принял этот токен. Проверьте его и введите снова.");
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  let url = scheme + "//" + location.host + "/operator/ws?token=" + encodeURIComponent(token);
  if (lastSeq !== null) url += "&after=" + lastSeq;
  const ws = new WebSocket(url);
  socket = ws;
  connectionSeq = null;
  ws.onopen = () => { retryDelay = 1000; setStatus("подключено", "connected"); };
  ws.onmessage = (event) => {
    if (socket !== ws) return; // a connection the page has left
    let msg;
    try { msg = JSON.parse(event.data); } catch (e) { return; }
    if (msg.type === "incoming_call") showCall(msg);
  };
  ws.onclose = () => {
    if (socket !== ws) return;
    socket = null;
    const seconds = Math.round(retryDelay / 1000);
    setStatus("соединение потеряно, повтор через " + seconds + " с", "retrying");
    retryTimer = setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  };
}

window.addEventListener("hashchange", () => {
  const t = tokenFromFragment();
  if (t && t !== token) useToken(t);
});

token = tokenFromFragment() || localStorage.getItem(STORE_KEY);
if (token) {
  localStorage.setItem(STORE_KEY, token);
  connect();
} else {
  askForToken(null);
}
