// The operator page: polls /api/state and /api/rejects once a second. No library, no CDN.
"use strict";
const VERDICTS = ["PASS", "FAIL", "ERROR", "TIMEOUT", "DROPPED"];
let lastSeq = -1;
let shown = "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function renderState(s) {
  const st = document.getElementById("status");
  const d = s.daemon;
  if (!d.heard) { st.className = "status unknown"; st.textContent = "no heartbeat yet"; }
  else if (d.ready) { st.className = "status ready"; st.textContent = "READY · heartbeat " + d.heartbeat_age_s.toFixed(1) + " s ago"; }
  else { st.className = "status down"; st.textContent = "NOT READY · heartbeat " + (d.heartbeat_age_s === null ? "-" : d.heartbeat_age_s.toFixed(1)) + " s ago"; }
  document.getElementById("model").textContent = d.model_version ? (d.daemon_id + " · engines " + d.model_version) : "";
  document.getElementById("since").textContent = "(since " + new Date(s.since * 1000).toLocaleTimeString() + ")";
  const counts = document.getElementById("counts");
  counts.replaceChildren(...VERDICTS.map(k => el("div", { class: "count " + k, "data-verdict": k }, el("b", {}, s.counts[k]), k)));
  document.getElementById("rate").textContent = s.rate_per_s.toFixed(1);
  const body = document.querySelector("#cameras tbody");
  const names = new Set([...Object.keys(s.cameras), ...Object.keys(s.camera_health || {})]);
  body.replaceChildren(...[...names].sort().map(c => {
    const n = s.cameras[c] || {};
    const h = (s.camera_health || {})[c];
    const state = h ? (h.state || "ok") : "-";
    const why = h && h.reason ? " (" + h.reason + ")" : "";
    return el("tr", { "data-camera": c }, el("td", {}, c), ...VERDICTS.map(k => el("td", {}, n[k] || 0)),
      el("td", { class: state === "alarm" ? "alarm" : "" }, state + why));
  }));
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

function figure(src, caption, alt) {
  return el("figure", {}, src ? el("img", { src, alt, loading: "lazy" }) : el("div", { class: "noimg" }, alt), el("figcaption", {}, caption));
}

function renderRejects(r) {
  const note = document.getElementById("archive-note");
  note.textContent = r.archive ? "" : "No archive yet (archive.dir unset, or no reject stored so far).";
  const key = r.entries.map(e => e.id).join(",");
  if (key === shown) return;
  shown = key;
  const g = document.getElementById("gallery");
  g.replaceChildren(...r.entries.map(e => {
    const img = k => "/api/image/" + e.id + "/" + k;
    const second = e.has_inspected ? figure(img("inspected"), "denoised (" + e.denoiser + ")", "denoised")
      : figure(null, "classifier saw it as received", e.has_received ? "no denoising" : "no pixels");
    const card = el("article", { class: "reject", "data-frame": String(e.frame_id), "data-id": String(e.id) },
      el("div", { class: "pair" }, figure(e.has_received ? img("received") : null, "received", "no pixels"), second),
      el("div", { class: "meta" },
        el("span", { class: "verdict " + e.verdict }, e.verdict), " · ", e.camera_id + " #" + e.frame_id, el("br"),
        "score " + (e.defect_score === null ? "-" : e.defect_score.toFixed(3)) + " / threshold " + (e.threshold === null ? "-" : e.threshold.toFixed(3)),
        " · noise " + (e.noise_type || "-"), el("br"),
        el("span", { class: "muted" }, new Date(e.published_ns / 1e6).toLocaleTimeString() + (e.reason ? " · " + e.reason : ""))));
    if (e.has_received && e.verdict === "FAIL") {
      const btn = el("button", { type: "button" }, "where is the defect?");
      btn.addEventListener("click", () => {
        btn.disabled = true; btn.textContent = "computing…";
        const f = figure(img("evidence"), "evidence (occlusion)", "evidence");
        f.querySelector("img").addEventListener("load", () => btn.remove());
        f.querySelector("img").addEventListener("error", () => { btn.textContent = "no evidence available"; });
        card.append(f);
      });
      card.append(btn);
    }
    return card;
  }));
}

async function tick() {
  try {
    const s = await getJSON("/api/state");
    renderState(s);
    if (s.last_seq !== lastSeq) {
      renderRejects(await getJSON("/api/rejects?limit=12"));
      lastSeq = s.last_seq;
    }
  } catch (err) {
    const st = document.getElementById("status");
    st.className = "status down"; st.textContent = "page server unreachable";
  } finally {
    setTimeout(tick, 1000);
  }
}

document.addEventListener("DOMContentLoaded", tick);
