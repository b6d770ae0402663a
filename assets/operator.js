// The operator page's script (assets/operator.html), served as
// /operator/app.<hash>.js so that the page's Content-Security-Policy needs no
// 'unsafe-inline'. It sets no inline style attributes and writes no HTML
// (textContent, className and the hidden property only), which the policy
// would block or which would open the page to injection.
"use strict";
// The screen's token comes from the URL fragment (#token=T: never sent to
// the server, so never in its logs), else from local storage. A token read
// from the fragment is stored and taken out of the address bar at once
// (history.replaceState): it is not left on screen, and a reload after a
// token typed in the form uses the typed one, not a stale fragment.
//
// Sequence numbers are per operator key. The page keeps the last seq it saw
// (lastSeq) to reconnect with after=<lastSeq> and get what it missed; it
// de-duplicates only within one connection (connectionSeq). A new connection
// may answer with lower numbers (the gateway's numbers were reset: it
// replays from seq 1): those are shown, and lastSeq follows them. A token
// change starts clean: the cards, the numbers and the name of the old
// operator go, since the new token may be another operator's.
//
// A fresh page (a reload included) connects with after=0: the gateway
// replays the calls of the last popup.replay_age, so a call ringing during a
// reload is shown again; cards of calls from before the page (or the token)
// was opened are marked as earlier and make no sound.
const STORE_KEY = "cti-gateway.operator-token";
const ALERTS_KEY = "cti-gateway.alerts";
const ASKED_KEY = "cti-gateway.notification-asked";
// Cards beyond this many are dropped, oldest first: a page open all shift
// stays small.
const MAX_CARDS = 50;
const BASE_TITLE = document.title;
const statusEl = document.getElementById("status");
const operatorEl = document.getElementById("operator");
const alertsEl = document.getElementById("alerts");
const loginEl = document.getElementById("login");
const loginError = document.getElementById("login-error");
const callsEl = document.getElementById("calls");
const emptyEl = document.getElementById("empty");
let token = null;
// When the current token was taken (ms): calls before it are "earlier".
let tokenSince = Date.now();
// The last seq shown, on the gateway run the page last heard from.
let lastSeq = null;
// The last seq shown on the current connection; null until its first message.
let connectionSeq = null;
let socket = null;
// Bumped by every disconnect, so a connect overtaken while it checked the
// token (by another connect, the login form or pagehide) gives up instead of
// opening a second socket.
let attempt = 0;
let retryDelay = 1000;
let retryTimer = null;
// Calls that came while the tab was hidden, counted in the title.
let unread = 0;
let audio = null;

function setStatus(text, cls) {
  statusEl.textContent = text;
  statusEl.className = cls || "";
}

function setOperator(name) {
  operatorEl.textContent = name ? "Оператор: " + name : "";
  operatorEl.hidden = !name;
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

// Takes the fragment (and the token in it) out of the address bar and the
// history entry, without a reload.
function forgetFragment() {
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
}

// Closes the current connection (if any) without the reconnect its close
// would otherwise start, and cancels a pending reconnect and its countdown.
function disconnect() {
  attempt++;
  if (socket) { socket.onclose = null; socket.onmessage = null; socket.close(); socket = null; }
  clearInterval(retryTimer);
  retryTimer = null;
}

// A token: connect with it. Another token than the current one starts clean.
function useToken(value) {
  if (value !== token) {
    disconnect();
    token = value;
    tokenSince = Date.now();
    lastSeq = null;
    callsEl.replaceChildren();
    emptyEl.hidden = false;
    setOperator(null);
    clearUnread();
  }
  retryDelay = 1000;
  localStorage.setItem(STORE_KEY, token);
  loginEl.hidden = true;
  connect();
}

function askForToken(message) {
  disconnect();
  forgetFragment();
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

// Only an http:// or https:// URL becomes a link: a `javascript:` or
// `data:` one (whatever a CRM sent) is never put in an href.
function isWebUrl(url) {
  if (typeof url !== "string" || !/^https?:\/\//i.test(url)) return false;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:";
  } catch (_) {
    return false;
  }
}

// The record's pages in other systems (its own, a CRM's): each a link that
// opens in a new tab, which gets neither this page (noopener) nor its
// address (noreferrer, the token having been in it once).
function links(dl, list) {
  if (!Array.isArray(list)) return;
  const anchors = [];
  for (const link of list) {
    if (!link || !isWebUrl(link.url)) continue;
    const a = document.createElement("a");
    a.href = link.url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.className = "link";
    a.textContent = [link.system, link.kind].filter(Boolean).join(": ") || link.url;
    anchors.push(a);
  }
  if (anchors.length === 0) return;
  const dt = document.createElement("dt");
  dt.textContent = "Ссылки";
  const dd = document.createElement("dd");
  anchors.forEach((a, i) => {
    if (i > 0) dd.append(" · ");
    dd.append(a);
  });
  dl.append(dt, dd);
}

// Whether a call was made before the current token was taken (a reload's
// replay): `at` has whole seconds, so it is compared with the second the
// token was taken.
function isEarlier(msg) {
  const at = Date.parse(msg.at || "");
  return !Number.isNaN(at) && at < Math.floor(tokenSince / 1000) * 1000;
}

function showCall(msg) {
  if (typeof msg.seq === "number") {
    // Within one connection the numbers only grow; across connections the
    // gateway sends only what is after `after`, or a new run from seq 1.
    if (connectionSeq !== null && msg.seq <= connectionSeq) return; // already shown
    connectionSeq = msg.seq;
    lastSeq = msg.seq;
  }
  const earlier = isEarlier(msg);
  const c = msg.counterparty;
  const card = document.createElement("article");
  card.className = "card latest" + (c ? "" : " unknown") + (earlier ? " earlier" : "");
  card.dataset.seq = msg.seq;
  const time = document.createElement("time");
  time.dateTime = msg.at || "";
  time.textContent = msg.at ? new Date(msg.at).toLocaleTimeString("ru-RU") : "";
  if (earlier) {
    const note = document.createElement("span");
    note.className = "earlier-note";
    note.textContent = "ранее";
    time.append(" · ", note);
  }
  const title = document.createElement("h2");
  title.textContent = c ? c.name : "Неизвестный номер " + (msg.number || msg.raw_number || "");
  const dl = document.createElement("dl");
  field(dl, "Номер", msg.number || msg.raw_number);
  if (c) {
    field(dl, "ИНН", c.inn);
    field(dl, "КПП", c.kpp);
    field(dl, "Категория", c.category);
    field(dl, "Менеджер", c.manager_name);
    field(dl, "Менеджер (доб.)", c.manager_phone);
    field(dl, "Менеджер из", c.manager_source);
    field(dl, "Телефоны", c.phones);
    field(dl, "E-mail", c.emails);
    field(dl, "Адрес", c.address);
    links(dl, c.links);
  }
  card.append(time, title, dl);
  for (const old of callsEl.querySelectorAll(".card.latest")) old.classList.remove("latest");
  callsEl.prepend(card);
  while (callsEl.children.length > MAX_CARDS) callsEl.lastElementChild.remove();
  emptyEl.hidden = true;
  if (!earlier) alertOf(title.textContent, msg.number || msg.raw_number || "");
}

// A live call: counted in the title while the tab is hidden; with the
// switch on, a short tone, and a notification while the tab is hidden.
function alertOf(title, number) {
  if (document.hidden) {
    unread++;
    document.title = "(" + unread + ") " + BASE_TITLE;
  }
  if (!alertsEl.checked) return;
  beep();
  const N = window.Notification;
  if (document.hidden && N && N.permission === "granted") {
    try { new N(title, { body: number, tag: "cti-gateway-call" }); } catch (e) { /* not allowed here */ }
  }
}

function clearUnread() {
  unread = 0;
  document.title = BASE_TITLE;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) clearUnread();
});

// Two short tones, made by the browser (no sound file to serve or allow).
function beep() {
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return;
    if (!audio) audio = new Ctx();
    if (audio.resume) audio.resume();
    for (const [offset, hz] of [[0, 880], [0.25, 660]]) {
      const osc = audio.createOscillator();
      const gain = audio.createGain();
      osc.frequency.value = hz;
      gain.gain.value = 0.15;
      osc.connect(gain);
      gain.connect(audio.destination);
      osc.start(audio.currentTime + offset);
      osc.stop(audio.currentTime + offset + 0.18);
    }
  } catch (e) { /* no sound: the card is still there */ }
}

// The switch: off by default, remembered in this browser. Turning it on
// asks for the notification permission, once per browser (a refusal is the
// user's answer, not to be asked again); the sound needs no permission.
alertsEl.checked = localStorage.getItem(ALERTS_KEY) === "on";
alertsEl.addEventListener("change", () => {
  localStorage.setItem(ALERTS_KEY, alertsEl.checked ? "on" : "off");
  if (!alertsEl.checked) return;
  const N = window.Notification;
  if (N && N.permission === "default" && !localStorage.getItem(ASKED_KEY)) {
    localStorage.setItem(ASKED_KEY, "1");
    try {
      const asked = N.requestPermission();
      if (asked && asked.catch) asked.catch(() => {});
    } catch (e) { /* an old browser: no notifications */ }
  }
  // Created in the click, so the browser lets it play later.
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!audio && Ctx) { try { audio = new Ctx(); } catch (e) { /* no sound */ } }
});

// Asks who the token belongs to: the operator's {name, key}, "refused" (a
// 401), or null when the gateway cannot be reached. A WebSocket refused with
// 401 only shows as a closed socket, so this comes first.
async function whoAmI() {
  try {
    const r = await fetch("/operator/me?token=" + encodeURIComponent(token), { cache: "no-store" });
    if (r.status === 401) return "refused";
    if (!r.ok) return null;
    return await r.json();
  } catch (e) {
    return null;
  }
}

// Waits retryDelay before the next connect, counting the seconds down in
// the status, and doubles the delay (up to 30 s) for the time after.
function scheduleRetry() {
  const mine = attempt;
  const deadline = Date.now() + retryDelay;
  retryDelay = Math.min(retryDelay * 2, 30000);
  const tick = () => {
    if (mine !== attempt) return;
    const left = deadline - Date.now();
    if (left <= 0) { clearInterval(retryTimer); retryTimer = null; connect(); return; }
    setStatus("соединение потеряно, повтор через " + Math.ceil(left / 1000) + " с", "retrying");
  };
  clearInterval(retryTimer);
  retryTimer = setInterval(tick, 200);
  tick();
}

async function connect() {
  disconnect();
  const mine = attempt;
  setStatus("подключение…", "retrying");
  const me = await whoAmI();
  if (mine !== attempt) return; // overtaken: the newer attempt connects
  if (me === "refused") {
    setStatus("токен не принят", "refused");
    localStorage.removeItem(STORE_KEY);
    setOperator(null);
    askForToken("Сервер не принял этот токен. Проверьте его и введите снова.");
    return;
  }
  if (me === null) { scheduleRetry(); return; }
  setOperator(me.name || me.key);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + location.host + "/operator/ws?token=" + encodeURIComponent(token) +
              "&after=" + (lastSeq === null ? 0 : lastSeq);
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
    scheduleRetry();
  };
}

window.addEventListener("hashchange", () => {
  const t = tokenFromFragment();
  forgetFragment();
  if (t && t !== token) useToken(t);
});

// Leaving the page closes its socket for good: a page kept in the
// back/forward cache must not stay a screen that no one sees. If the
// browser brings it back anyway, it connects again.
window.addEventListener("pagehide", () => {
  disconnect();
  setStatus("не подключено", "");
});
window.addEventListener("pageshow", (e) => {
  if (e.persisted && token) connect();
});

const initial = tokenFromFragment();
forgetFragment();
if (initial) {
  useToken(initial);
} else if (localStorage.getItem(STORE_KEY)) {
  useToken(localStorage.getItem(STORE_KEY));
} else {
  askForToken(null);
}
