// The operator page: polls /api/state once a second, and the latest rejects when a verdict arrived.
// No library, no CDN. Every time the API gives is ISO 8601 with its offset; the page shows it in the
// browser's zone and names the zone. Every POST carries the CSRF token the server hands the page.
"use strict";
const VERDICTS = ["PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED"];
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
const PAGE = 24;
let csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
let marks = {};
let reviewsOn = false;
let evidenceOn = false;
let lastSeq = -1;
let listing = { query: "", offset: 0, maxId: 0, total: 0 };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v; else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// "2026-12-01 10:00:03 CET": the browser's zone, named. Date first, year first: no month/day guessing.
const FMT = new Intl.DateTimeFormat("en-GB", {
  year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
  hourCycle: "h23", timeZoneName: "short",
});
function fmt(iso) {
  if (!iso) return "-";
  const p = Object.fromEntries(FMT.formatToParts(new Date(iso)).map(x => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second} ${p.timeZoneName}`;
}
function when(iso) {
  return el("time", { datetime: iso, title: iso }, fmt(iso));
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) {
    let msg = "HTTP " + r.status;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    const err = new Error(msg); err.status = r.status; throw err;
  }
  return r.json();
}

async function post(url, body) {
  const send = () => {
    const headers = { "X-CSRF-Token": csrf };
    const opts = { method: "POST", credentials: "same-origin", cache: "no-store", headers };
    if (body !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts);
  };
  let r = await send();
  if (r.status === 403) { // the page server restarted (a new token): fetch it and try once more
    try { renderState(await getJSON("/api/state")); } catch (e) { return r; }
    r = await send();
  }
  return r;
}

async function failure(r) {
  try { return (await r.json()).error || ("HTTP " + r.status); } catch (e) { return "HTTP " + r.status; }
}

// -- live state ---------------------------------------------------------------------------------

function renderState(s) {
  csrf = s.csrf || csrf;
  marks = s.marks || marks;
  reviewsOn = s.reviews; evidenceOn = s.evidence;
  document.getElementById("reviews-off").hidden = s.reviews;
  const st = document.getElementById("status");
  const d = s.daemon;
  if (!d.heard) { st.className = "status unknown"; st.textContent = "no heartbeat yet"; }
  else if (d.ready) { st.className = "status ready"; st.textContent = "READY · heartbeat " + d.heartbeat_age_s.toFixed(1) + " s ago"; }
  else { st.className = "status down"; st.textContent = "NOT READY · heartbeat " + (d.heartbeat_age_s === null ? "-" : d.heartbeat_age_s.toFixed(1)) + " s ago"; }
  document.getElementById("model").textContent = d.model_version ? (d.daemon_id + " · engines " + d.model_version) : "";
  const t = s.totals;
  const since = document.getElementById("since");
  since.replaceChildren(t.source === "daemon" ? "(since the daemon started " : "(what this page heard since ", when(t.since), ")");
  const counts = document.getElementById("counts");
  counts.replaceChildren(...VERDICTS.map(k => el("div", { class: "count " + k, "data-verdict": k }, el("b", {}, t.counts[k]), k)));
  document.getElementById("rate").textContent = s.rate_per_s.toFixed(1);
  document.getElementById("reject-share").textContent = t.total ? (100 * (t.total - t.counts.PASS) / t.total).toFixed(1) + "%" : "-";
  document.getElementById("page-since").replaceChildren(when(s.page_started));
  const body = document.querySelector("#cameras tbody");
  const names = [...new Set([...Object.keys(s.cameras), ...Object.keys(s.camera_health || {})])].sort();
  const rows = names.map(c => {
    const n = s.cameras[c] || {};
    const h = (s.camera_health || {})[c];
    const state = h ? (h.state || "ok") : "-";
    const why = h && h.reason ? " (" + h.reason + ")" : "";
    return el("tr", { "data-camera": c }, el("td", {}, c), ...VERDICTS.map(k => el("td", {}, n[k] || 0)),
      el("td", { class: state === "alarm" ? "alarm" : "" }, state + why));
  });
  const o = s.cameras_other;
  if (o && o.folded) {
    rows.push(el("tr", { "data-camera": "", class: "other" }, el("td", {}, "other (" + o.folded + " ids)"),
      ...VERDICTS.map(k => el("td", {}, o.counts[k] || 0)), el("td", {}, "")));
  }
  body.replaceChildren(...rows);
  renderPlot(s.reject_rate);
}

function renderPlot(rows) {
  const svg = document.getElementById("plot");
  const W = 600, H = 160, pad = 18;
  const ns = "http://www.w3.org/2000/svg";
  const parts = [];
  const line = (x1, y1, x2, y2) => { const l = document.createElementNS(ns, "line"); Object.entries({ x1, y1, x2, y2, class: "axis" }).forEach(([k, v]) => l.setAttribute(k, v)); return l; };
  const text = (x, y, t, anchor) => { const e = document.createElementNS(ns, "text"); e.setAttribute("x", x); e.setAttribute("y", y); e.setAttribute("text-anchor", anchor || "start"); e.textContent = t; return e; };
  parts.push(line(pad, H - pad, W, H - pad), line(pad, 4, pad, H - pad));
  const maxPct = Math.max(10, ...rows.map(r => r.frames ? 100 * r.rejects / r.frames : 0));
  const bw = (W - pad) / 61;
  for (const r of rows) {
    if (!r.frames) continue;
    const pct = 100 * r.rejects / r.frames;
    const h = (H - pad - 4) * pct / maxPct;
    const b = document.createElementNS(ns, "rect");
    b.setAttribute("x", W - (r.minute_ago + 1) * bw); b.setAttribute("y", H - pad - h);
    b.setAttribute("width", Math.max(bw - 1, 1)); b.setAttribute("height", h); b.setAttribute("class", "bar");
    const t = document.createElementNS(ns, "title"); t.textContent = r.minute_ago + " min ago: " + r.rejects + " of " + r.frames + " rejected";
    b.append(t); parts.push(b);
  }
  parts.push(text(pad + 2, 12, maxPct.toFixed(0) + "%"), text(pad + 2, H - 4, "-60 min"), text(W - 2, H - 4, "now", "end"));
  svg.replaceChildren(...parts);
}

// -- cards ----------------------------------------------------------------------------------------

function figure(src, caption, alt) {
  return el("figure", {}, src ? el("img", { src, alt, loading: "lazy" }) : el("div", { class: "noimg" }, alt), el("figcaption", {}, caption));
}

function reviewLine(r) {
  if (!r) return el("div", { class: "review none" }, "not reviewed");
  return el("div", { class: "review " + r.mark, "data-mark": r.mark },
    el("b", {}, r.label), " · ", r.by, " · ", when(r.at), r.note ? el("div", { class: "note" }, "“" + r.note + "”") : null);
}

function reviewForm(e, card) {
  const sel = el("select", { name: "mark", "aria-label": "mark" }, ...Object.entries(marks).map(([k, v]) => el("option", { value: k }, v)));
  const note = el("input", { name: "note", type: "text", maxlength: "500", placeholder: "note (optional)", "aria-label": "note" });
  const save = el("button", { type: "submit" }, "save mark");
  const msg = el("span", { class: "muted", role: "status" });
  const form = el("form", { class: "mark" }, sel, note, save, msg);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const who = document.getElementById("reviewer");
    if (!who.value.trim()) { msg.textContent = "enter your name (Reviewer, at the top) first"; who.focus(); return; }
    save.disabled = true; msg.textContent = "saving…";
    try {
      const r = await post("/api/reviews/" + e.id, { mark: sel.value, note: note.value, by: who.value.trim() });
      if (!r.ok) { msg.textContent = await failure(r); return; }
      const saved = (await r.json()).review;
      e.review = saved;
      for (const c of document.querySelectorAll(`.reject[data-id="${e.id}"]`)) c.querySelector(".review").replaceWith(reviewLine(saved));
      msg.textContent = "saved"; note.value = "";
      card.querySelector("details").open = false;
    } catch (err) { msg.textContent = String(err.message || err); }
    finally { save.disabled = false; }
  });
  return el("details", {}, el("summary", {}, "mark…"), form);
}

function card(e) {
  const img = k => "/api/image/" + e.id + "/" + k;
  const second = e.has_inspected ? figure(img("inspected"), "denoised (" + e.denoiser + ")", "denoised")
    : figure(null, "classifier saw it as received", e.has_received ? "no denoising" : "no pixels");
  const c = el("article", { class: "reject " + e.verdict, "data-frame": String(e.frame_id), "data-id": String(e.id) },
    el("div", { class: "pair" }, figure(e.has_received ? img("received") : null, "received", "no pixels"), second),
    el("div", { class: "meta" },
      el("span", { class: "verdict " + e.verdict }, e.verdict), " · ", (e.camera_id || "-") + " #" + e.frame_id, el("br"),
      e.verdict === "FAIL" || e.verdict === "PASS"
        ? "score " + (e.defect_score === null ? "-" : e.defect_score.toFixed(3)) + " / threshold " + (e.threshold === null ? "-" : e.threshold.toFixed(3)) + " · noise " + (e.noise_type || "-")
        : el("span", { class: "reason" }, e.reason || "no reason given"),
      el("br"), el("span", { class: "muted" }, when(e.published))),
    reviewLine(e.review));
  const actions = el("div", { class: "actions" });
  if (e.has_received && evidenceOn && (e.verdict === "FAIL" || e.verdict === "PASS")) {
    const show = () => {
      const f = figure(img("evidence") + "?v=" + Date.now(), "where the classifier looked (occlusion)", "evidence");
      f.classList.add("evidence"); c.querySelector(".pair").after(f);
    };
    if (e.has_evidence) show();
    else {
      const btn = el("button", { type: "button", class: "evidence-btn" }, "where is the defect?");
      btn.addEventListener("click", async () => {
        btn.disabled = true; btn.textContent = "computing…";
        try {
          const r = await post("/api/image/" + e.id + "/evidence");
          if (!r.ok) { btn.textContent = await failure(r); btn.disabled = false; return; }
          e.has_evidence = true; btn.remove(); show();
        } catch (err) { btn.textContent = "no evidence: " + (err.message || err); btn.disabled = false; }
      });
      actions.append(btn);
    }
  }
  if (reviewsOn) actions.append(reviewForm(e, c));
  c.append(actions);
  return c;
}

// Keep the cards already shown (an open mark form, a typed note, a shown evidence map survive a new reject).
function reconcile(box, entries) {
  const have = new Map([...box.children].map(c => [c.dataset.id, c]));
  const want = entries.map(e => {
    const c = have.get(String(e.id));
    if (!c) return card(e);
    const line = c.querySelector(".review"); // a mark saved elsewhere since: show it
    if (line && (line.dataset.mark || "") !== (e.review ? e.review.mark : "")) line.replaceWith(reviewLine(e.review));
    return c;
  });
  want.forEach((node, i) => { if (box.children[i] !== node) box.insertBefore(node, box.children[i] || null); });
  while (box.children.length > want.length) box.lastElementChild.remove();
}

function renderLatest(fails, errors) {
  const note = document.getElementById("archive-note");
  note.textContent = fails.archive ? (fails.entries.length ? "" : "No defect reject archived yet.") : "No archive yet (archive.dir unset, or nothing stored so far).";
  reconcile(document.getElementById("gallery"), fails.entries);
  const body = document.querySelector("#errors tbody");
  body.replaceChildren(...(errors.entries.length ? errors.entries.map(e => el("tr", { "data-id": String(e.id), "data-frame": String(e.frame_id) },
    el("td", {}, when(e.published)), el("td", {}, e.camera_id || "-"), el("td", {}, e.frame_id === null ? "-" : e.frame_id),
    el("td", { class: "verdict " + e.verdict }, e.verdict), el("td", { class: "reason" }, e.reason || "-")))
    : [el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no errors archived"))]));
}

// -- the archive ----------------------------------------------------------------------------------

function filterQuery() {
  const f = document.getElementById("filters");
  const q = new URLSearchParams();
  const cam = f.camera.value.trim();
  if (cam) q.set("camera", cam);
  for (const b of f.querySelectorAll('input[name="verdict"]:checked')) q.append("verdict", b.value);
  const range = f.range.value;
  if (range === "custom") {
    if (f.since.value) q.set("since", new Date(f.since.value).toISOString());
    if (f.until.value) q.set("until", new Date(f.until.value).toISOString());
  } else if (range) q.set("since", range);
  if (f.review.value !== "any") q.set("review", f.review.value);
  return q;
}

async function loadArchive(offset) {
  const msg = document.getElementById("archive-msg");
  const q = new URLSearchParams(listing.query);
  q.set("limit", PAGE); q.set("offset", offset);
  if (offset > 0 && listing.maxId) q.set("max_id", listing.maxId);
  msg.textContent = "loading…";
  try {
    const r = await getJSON("/api/rejects?" + q);
    listing.offset = offset; listing.total = r.total; listing.maxId = r.max_id;
    const box = document.getElementById("archive");
    box.replaceChildren(...r.entries.map(card));
    document.getElementById("archive-count").textContent = r.total
      ? `${offset + 1}–${offset + r.entries.length} of ${r.total}` : (r.archive ? "nothing matches" : "no archive yet");
    document.getElementById("newer").disabled = offset <= 0;
    document.getElementById("older").disabled = offset + r.entries.length >= r.total;
    const list = document.getElementById("camera-list");
    list.replaceChildren(...(r.cameras || []).map(c => el("option", { value: c })));
    msg.textContent = "";
  } catch (err) { msg.textContent = String(err.message || err); }
}

async function exportZip() {
  const msg = document.getElementById("archive-msg");
  msg.textContent = "writing the zip…";
  const q = new URLSearchParams(listing.query);
  if (listing.maxId) q.set("max_id", listing.maxId);
  try {
    const r = await post("/api/export?" + q);
    if (!r.ok) { msg.textContent = await failure(r); return; }
    const cd = r.headers.get("Content-Disposition") || "";
    const m = /filename\*=utf-8''([^;]+)/i.exec(cd) || /filename="?([^";]+)/i.exec(cd);
    const a = el("a", { href: URL.createObjectURL(await r.blob()), download: m ? decodeURIComponent(m[1]) : "rejects.zip" });
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    msg.textContent = "exported " + r.headers.get("X-Entries") + " entries";
  } catch (err) { msg.textContent = String(err.message || err); }
}

function setupArchive() {
  const f = document.getElementById("filters");
  const custom = () => { for (const c of f.querySelectorAll(".custom")) c.hidden = f.range.value !== "custom"; };
  f.range.addEventListener("change", custom); custom();
  f.addEventListener("submit", ev => { ev.preventDefault(); listing.query = filterQuery().toString(); loadArchive(0); });
  document.getElementById("newer").addEventListener("click", () => loadArchive(Math.max(0, listing.offset - PAGE)));
  document.getElementById("older").addEventListener("click", () => loadArchive(listing.offset + PAGE));
  document.getElementById("export").addEventListener("click", () => { listing.query = filterQuery().toString(); exportZip(); });
  const who = document.getElementById("reviewer");
  try { who.value = localStorage.getItem("inspector.reviewer") || ""; } catch (e) { /* storage off */ }
  who.addEventListener("change", () => { try { localStorage.setItem("inspector.reviewer", who.value.trim()); } catch (e) { /* storage off */ } });
  const now = fmt(new Date().toISOString());
  document.getElementById("zone").textContent = "times in " + ZONE + " (" + now.split(" ").slice(2).join(" ") + ")";
  listing.query = filterQuery().toString();
}

// -- the loop -----------------------------------------------------------------------------------------

async function tick() {
  try {
    const s = await getJSON("/api/state");
    renderState(s);
    if (s.last_seq !== lastSeq) {
      const [fails, errors] = await Promise.all([
        getJSON("/api/rejects?limit=12&verdict=FAIL"),
        getJSON("/api/rejects?limit=12&verdict=ERROR&verdict=TIMEOUT&verdict=DROPPED"),
      ]);
      renderLatest(fails, errors);
      if (lastSeq === -1) loadArchive(0);
      lastSeq = s.last_seq;
    }
  } catch (err) {
    const st = document.getElementById("status");
    st.className = "status down";
    st.textContent = err.status === 401 || err.status === 429 ? "token refused: " + err.message : "page server unreachable";
  } finally {
    setTimeout(tick, 1000);
  }
}

document.addEventListener("DOMContentLoaded", () => { setupArchive(); tick(); });
