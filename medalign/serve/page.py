"""The page ``medalign serve`` shows at ``/``: type a finding or drop a study; see calls and similar
cases with thumbnails and report text. It holds no data: everything comes from ``/api/`` with the
token the user types (kept for the browser tab only). Text from the server is set as text, never HTML."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medalign</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em;color:#222}
section{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}
#drop{border:2px dashed #888;padding:2em;text-align:center;color:#555}
.hit{display:flex;gap:1em;margin:.6em 0;align-items:flex-start}.hit img{width:128px;height:128px;background:#000}
.report{white-space:pre-wrap;font-size:.9em}.pos{color:#a00;font-weight:bold}.neg{color:#070}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}
#status{color:#a00}
</style></head><body>
<h1>medalign</h1>
<p id="about">Enter the service token to begin.</p>
<section><label>Token <input id="token" type="password" size="40" autocomplete="off"></label>
<button id="connect">Connect</button></section>
<section><h2>Find cases by words</h2>
<input id="text" size="50" placeholder="e.g. large right pleural effusion"> <button id="search">Search</button></section>
<section><h2>A study: calls and similar cases</h2>
<div id="drop">Drop a NIfTI file or a zip of one DICOM series here, or <input id="file" type="file"></div></section>
<p id="status" role="status"></p>
<section id="calls" hidden><h2>Calls</h2><p id="ood"></p><table><thead><tr><th>finding</th><th>score</th><th>threshold</th><th>call</th></tr></thead>
<tbody id="callrows"></tbody></table></section>
<section id="results" hidden><h2 id="resultstitle">Similar cases</h2><div id="hits"></div></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let modality = null;
function token(){ return sessionStorage.getItem("medalign-token") || ""; }
function say(text){ $("status").textContent = text; }
async function api(path, options){
  options = options || {};
  options.headers = Object.assign({"Authorization": "Bearer " + token()}, options.headers || {});
  const r = await fetch(path, options);
  if (r.status === 401) { throw new Error("the token was not accepted"); }
  if (!r.ok) { let m = r.status + ""; try { m = (await r.json()).error || m; } catch (e) {} throw new Error(m); }
  return r;
}
async function connect(){
  sessionStorage.setItem("medalign-token", $("token").value.trim());
  try { const info = await (await api("/api/info")).json(); modality = info.modality;
    $("about").textContent = "Model: " + info.modality.toUpperCase() + ", " + info.findings.length + " findings; " + info.studies + " indexed studies.";
    say(""); } catch (e) { say(e.message); }
}
async function showHits(title, results){
  $("resultstitle").textContent = title; const box = $("hits"); box.replaceChildren(); $("results").hidden = false;
  for (const h of results){
    const row = document.createElement("div"); row.className = "hit";
    const img = document.createElement("img"); img.alt = "study " + h.study_id;
    const text = document.createElement("div");
    const head = document.createElement("b"); head.textContent = h.study_id + "  (similarity " + h.score.toFixed(3) + ")";
    const rep = document.createElement("div"); rep.className = "report"; rep.textContent = h.report;
    text.append(head, rep); row.append(img, text); box.append(row);
    api(h.thumbnail_url).then(r => r.blob()).then(b => { img.src = URL.createObjectURL(b); }).catch(() => {});
  }
}
async function search(){
  const q = $("text").value; if (!q.trim()) return; say("searching…");
  try { const r = await (await api("/api/search?k=5&text=" + encodeURIComponent(q))).json(); say(""); showHits("Cases matching: " + q, r.results); }
  catch (e) { say(e.message); }
}
async function study(file){
  say("reading the study…"); $("calls").hidden = true;
  const opts = {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}};
  const m = modality ? "modality=" + encodeURIComponent(modality) : "";
  try {
    const z = await (await api("/api/zeroshot?" + m, opts)).json();
    const rows = $("callrows"); rows.replaceChildren();
    for (const [name, f] of Object.entries(z.findings)){
      const tr = document.createElement("tr");
      for (const v of [name, f.score.toFixed(3), f.threshold === null ? "–" : f.threshold.toFixed(3), f.call || "no threshold"]){
        const td = document.createElement("td"); td.textContent = v; tr.append(td); }
      if (f.call) tr.lastChild.className = f.call === "positive" ? "pos" : "neg";
      rows.append(tr);
    }
    $("ood").textContent = z.out_of_distribution ? "Caution: unlike the training data (" + z.ood_reasons.join("; ") + ")" : "";
    $("calls").hidden = false;
    const s = await (await api("/api/similar?k=5&" + m, {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}})).json();
    say(""); showHits("Similar cases", s.results);
  } catch (e) { say(e.message); }
}
$("connect").onclick = connect;
$("search").onclick = search;
$("text").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
$("file").onchange = (e) => { if (e.target.files.length) study(e.target.files[0]); };
$("drop").addEventListener("dragover", (e) => e.preventDefault());
$("drop").addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files.length) study(e.dataTransfer.files[0]); });
// a link may carry #token=...&text=... (a fragment never reaches the server): kept for this tab, then dropped from the address
const given = new URLSearchParams(location.hash.slice(1));
if (given.get("token")) { sessionStorage.setItem("medalign-token", given.get("token")); history.replaceState(null, "", location.pathname); }
if (token()) { $("token").value = token(); connect().then(() => { if (given.get("text")) { $("text").value = given.get("text"); search(); } }); }
</script></body></html>
"""
