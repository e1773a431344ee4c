// Semantik's web UI: plain ES modules, no build step. Pages: #/jobs, #/jobs/ID, #/search, #/monitor.
const view = document.getElementById("view");
const TERMINAL = new Set(["completed", "completed_with_errors", "failed", "cancelled"]);
let cleanup = () => {};

// ---- API --------------------------------------------------------------------------------------
const token = () => sessionStorage.getItem("semantik-token");

function askToken() {
  const dialog = document.getElementById("token-dialog");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      const value = document.getElementById("token-input").value.trim();
      if (value) sessionStorage.setItem("semantik-token", value);
      resolve(Boolean(value));
    }, { once: true });
    dialog.showModal();
  });
}

class ApiError extends Error {
  constructor(status, error) { super(error.message || `HTTP ${status}`); this.status = status; this.code = error.code; this.details = error.details; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401 && await askToken()) return api(path, { method, body });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(response.status, data.error || {});
  return data;
}

function socket(path, onMessage) {
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
  const protocols = token() ? ["semantik", `bearer.${token()}`] : ["semantik"];
  let ws, closed = false, delay = 500;
  const open = () => {
    ws = new WebSocket(url, protocols);
    ws.onmessage = (event) => { delay = 500; onMessage(JSON.parse(event.data)); };
    ws.onclose = () => { if (!closed) setTimeout(open, delay = Math.min(delay * 2, 8000)); };
  };
  open();
  return () => { closed = true; ws.close(); };
}

// ---- helpers ----------------------------------------------------------------------------------
// Every value put into HTML goes through esc(), numbers included: events and monitor records come
// through Redis, and whatever can write there chooses what a "number" holds.
const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[ch]));
const enc = (value) => encodeURIComponent(String(value ?? ""));
// Object.assign, but an own "__proto__" key (JSON.parse makes one) cannot replace the prototype.
const assign = (target, data) => { for (const [key, value] of Object.entries(data || {})) if (key !== "__proto__") target[key] = value; return target; };
const finished = (job) => job.files_done + job.files_failed + job.files_skipped;
const percent = (job) => (job.files_total ? Math.round((100 * finished(job)) / job.files_total) : (TERMINAL.has(job.status) ? 100 : 0));
const bar = (job) => `<div class="bar" role="progressbar" aria-label="progress" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${esc(percent(job))}"><span style="width:${esc(percent(job))}%"></span></div>`;
const status = (value) => `<span class="status ${esc(value)}">${esc(value).replaceAll("_", " ")}</span>`;
const seconds = (value) => (value == null ? "–" : value < 90 ? `${esc(Math.round(value))} s` : `${esc(Math.round(value / 60))} min`);

function showError(target, error) {
  target.innerHTML = `<p class="error" role="alert">${esc(error.message)}</p>`;
}

// ---- jobs -------------------------------------------------------------------------------------
function jobRow(job) {
  return `<tr data-job="${esc(job.id)}">
    <td><a href="#/jobs/${esc(enc(job.id))}">${esc(job.name || String(job.id).slice(0, 8))}</a></td>
    <td class="hide-narrow">${esc(job.collection)}</td><td>${status(job.status)}</td>
    <td>${bar(job)}</td><td>${esc(finished(job))}/${esc(job.files_total)}</td>
    <td class="hide-narrow">${esc(job.chunks)}</td><td class="hide-narrow">${esc(job.files_failed)}</td></tr>`;
}

async function jobsPage() {
  view.innerHTML = `<h1>Jobs</h1>
    <section class="card" aria-labelledby="new-job"><h2 id="new-job" style="margin-top:0">New job</h2>
    <form class="grid" id="job-form" novalidate>
      <div class="field"><label for="f-collection">Collection</label><input id="f-collection" name="collection" required placeholder="notes"><span class="error" id="e-collection"></span></div>
      <div class="field"><label for="f-directory">Directory</label><input id="f-directory" name="directory" required placeholder="/srv/docs/team"><span class="error" id="e-directory"></span></div>
      <div class="field"><label for="f-include">Include globs</label><input id="f-include" name="include" placeholder="*.pdf, *.md"><span class="error" id="e-include"></span></div>
      <div class="field"><label for="f-exclude">Exclude globs</label><input id="f-exclude" name="exclude" placeholder="drafts/*"><span class="error" id="e-exclude"></span></div>
      <div class="actions"><button class="primary" type="submit">Start job</button></div>
    </form><p class="error" id="e-form" role="alert"></p></section>
    <div class="table-wrap"><table><thead><tr><th>Job</th><th class="hide-narrow">Collection</th><th>Status</th><th>Progress</th><th>Files</th>
    <th class="hide-narrow">Chunks</th><th class="hide-narrow">Failed</th></tr></thead><tbody id="jobs"></tbody></table></div>
    <p class="muted" id="jobs-empty" hidden>No jobs yet: start one above.</p>`;
  const rows = new Map();
  const render = () => {
    const tbody = document.getElementById("jobs");
    if (!tbody) return; // navigated away while a message was in flight
    const jobs = [...rows.values()].sort((a, b) => b.created_at.localeCompare(a.created_at));
    tbody.innerHTML = jobs.map(jobRow).join("");
    document.getElementById("jobs-empty").hidden = jobs.length > 0;
  };
  document.getElementById("job-form").addEventListener("submit", submitJob);
  cleanup = socket("/api/ws/jobs", async (event) => {
    if (event.type === "snapshot") { rows.clear(); event.data.jobs.forEach((job) => rows.set(job.id, job)); }
    else if (!rows.has(event.job_id)) { try { rows.set(event.job_id, await api(`/api/jobs/${enc(event.job_id)}`)); } catch { return; } }
    else assign(rows.get(event.job_id), event.data);
    render();
  });
}

async function submitJob(event) {
  event.preventDefault();
  const form = event.target;
  for (const el of form.querySelectorAll(".error")) el.textContent = "";
  for (const el of form.querySelectorAll("input")) el.removeAttribute("aria-invalid");
  document.getElementById("e-form").textContent = "";
  const list = (value) => (value.trim() ? value.split(",").map((s) => s.trim()).filter(Boolean) : undefined);
  const body = { collection: form.collection.value.trim(), directory: form.directory.value.trim(),
    include: list(form.include.value), exclude: list(form.exclude.value) };
  try {
    const job = await api("/api/jobs", { method: "POST", body });
    location.hash = `#/jobs/${enc(job.id)}`;
  } catch (error) {
    const fieldErrors = Array.isArray(error.details) ? error.details : [];
    if (error.code === "path_not_allowed") fieldErrors.push({ loc: ["directory"], msg: error.message });
    let placed = false;
    for (const detail of fieldErrors) {
      const name = detail.loc && detail.loc[0];
      const slot = document.getElementById(`e-${name}`);
      const message = detail.type === "string_pattern_mismatch" && name === "collection"
        ? "Use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit." : detail.msg;
      if (slot) { slot.textContent = message; form[name].setAttribute("aria-invalid", "true"); placed = true; }
    }
    if (!placed) document.getElementById("e-form").textContent = error.message;
    const first = form.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }
}

async function jobPage(id) {
  view.innerHTML = `<p><a href="#/jobs">← All jobs</a></p><div id="job"><p class="muted">Loading…</p></div>`;
  const failures = new Map();
  let job = null;
  const render = () => {
    const target = document.getElementById("job");
    if (!target || !job) return;
    target.innerHTML = `<h1>${esc(job.name || "Job")} <span class="muted" style="font-size:.9rem">${esc(job.id)}</span></h1>
      <div class="card"><p>${status(job.status)} <span class="muted">${esc(job.collection)} ← ${esc(job.directory)}</span></p>
      ${bar(job)}
      <div class="stats" style="margin-top:.75rem">
        <div class="stat"><span class="muted">Files</span><b id="files">${esc(finished(job))}/${esc(job.files_total)}</b></div>
        <div class="stat"><span class="muted">Chunks</span><b>${esc(job.chunks)}</b></div>
        <div class="stat"><span class="muted">Rate</span><b>${job.rate_chunks_s != null ? `${esc(job.rate_chunks_s)} chunks/s` : "–"}</b></div>
        <div class="stat"><span class="muted">ETA</span><b>${TERMINAL.has(job.status) ? "done" : seconds(job.eta_s)}</b></div>
        <div class="stat"><span class="muted">Failed / skipped</span><b>${esc(job.files_failed)} / ${esc(job.files_skipped)}</b></div>
        <div class="stat"><span class="muted">Unchanged / removed</span><b id="sync-counts">${esc(job.files_unchanged || 0)} / ${esc(job.files_removed || 0)}</b></div>
      </div>
      <p class="muted">Current file: <span id="current">${esc(job.current_file || "–")}</span></p>
      ${job.error ? `<p class="error">${esc(job.error)}</p>` : ""}
      <div class="actions">
        <button class="danger" id="cancel" ${TERMINAL.has(job.status) ? "disabled" : ""}>Cancel</button>
        <button id="retry" ${["failed", "cancelled", "completed_with_errors"].includes(job.status) ? "" : "disabled"}>Retry</button>
      </div><p class="error" id="action-error" role="alert"></p></div>
      <h2>Failed files</h2>${failures.size ? `<ul class="failures">${[...failures].map(([path, error]) => `<li><b>${esc(path)}</b>: ${esc(error)}</li>`).join("")}</ul>` : '<p class="muted">None.</p>'}`;
    document.getElementById("cancel").onclick = () => act("cancel");
    document.getElementById("retry").onclick = () => act("retry");
  };
  const act = async (what) => {
    try { assign(job, await api(`/api/jobs/${enc(id)}/${what}`, { method: "POST" })); render(); }
    catch (error) { document.getElementById("action-error").textContent = error.message; }
  };
  cleanup = socket(`/api/jobs/${enc(id)}/ws?stay=1`, (event) => {
    if (event.type === "snapshot") {
      job = event.data;
      for (const file of job.failed_files || []) failures.set(file.path, file.error);
    } else {
      if (!job) return;
      assign(job, event.data);
      if (event.type === "file_failed") failures.set(event.data.path, event.data.error);
      if (event.type === "job_queued") failures.clear();
    }
    render();
  });
  try { job = job || await api(`/api/jobs/${enc(id)}`); render(); } catch (error) { showError(document.getElementById("job"), error); }
}

// ---- search -----------------------------------------------------------------------------------
// The server's snippet: plain text and [start, end) offsets of the query's terms in code points
// (Array.from counts them; a string's own indexes count UTF-16 units), marked here.
function marked(snippet) {
  const chars = Array.from(String(snippet && snippet.text || ""));
  const spans = (Array.isArray(snippet && snippet.highlights) ? snippet.highlights : [])
    .map(([a, b]) => [Number(a), Number(b)]).filter(([a, b]) => a >= 0 && b > a && b <= chars.length).sort((x, y) => x[0] - y[0]);
  let out = "", at = 0;
  for (const [a, b] of spans) {
    if (a < at) continue;
    out += esc(chars.slice(at, a).join("")) + `<mark>${esc(chars.slice(a, b).join(""))}</mark>`;
    at = b;
  }
  return out + esc(chars.slice(at).join(""));
}

// Where a hit is: "report.pdf · p. 2 · Results › Measurements".
function place(hit) {
  const name = String(hit.path).split("/").pop();
  const parts = [`<b class="name" title="${esc(hit.path)}">${esc(name)}</b>`];
  if (hit.page != null) parts.push(`p. ${esc(hit.page)}`);
  if (hit.slide != null) parts.push(`slide ${esc(hit.slide)}`);
  if (hit.sheet) parts.push(`sheet ${esc(hit.sheet)}`);
  if (Array.isArray(hit.heading) && hit.heading.length) parts.push(`<span class="heading">${hit.heading.map(esc).join(" › ")}</span>`);
  return `<span class="place">${parts.join(" · ")}</span>`;
}

// The search form's filters, as the API takes them (empty ones left out).
function searchFilters() {
  const value = (id) => document.getElementById(id).value.trim();
  const filters = {};
  if (value("s-under")) filters.path_prefix = value("s-under");
  const types = value("s-types").split(/[\s,]+/).map((t) => t.replace(/^\./, "")).filter(Boolean);
  if (types.length) filters.file_types = types;
  if (value("s-after")) filters.modified_after = new Date(`${value("s-after")}T00:00:00`).toISOString();
  if (value("s-before")) filters.modified_before = new Date(`${value("s-before")}T23:59:59.999`).toISOString();
  return filters;
}

// [value, label, tooltip]; the first is the default (the API's too).
const SEARCH_MODES = [
  ["hybrid", "Hybrid", "Keywords and meaning, fused"],
  ["dense", "Dense", "Meaning only (the embedding model)"],
  ["keyword", "Keyword", "Exact terms (BM25) only"],
];
const retrievers = (hit) => (Array.isArray(hit.retrievers) && hit.retrievers.length
  ? ` · <span class="retrievers">${hit.retrievers.map((r) => `<span class="retriever">${esc(r)}</span>`).join("+")}</span>` : "");

// A content found at several paths (copies) is one hit; it names the other places too.
const alsoAt = (hit) => {
  const others = (Array.isArray(hit.paths) ? hit.paths : []).filter((path) => path !== hit.path);
  return others.length ? ` · <span class="also">also at ${others.map(esc).join(", ")}</span>` : "";
};

async function searchPage() {
  view.innerHTML = `<h1>Search</h1><form class="grid card" id="search-form">
      <div class="field"><label for="s-collection">Collection</label><select id="s-collection" required></select></div>
      <div class="field" style="grid-column: span 2"><label for="s-query">Query</label><input id="s-query" type="search" required placeholder="Ask by meaning or exact terms…"></div>
      <details class="filters" style="grid-column: 1 / -1"><summary>Filters</summary><div class="grid">
        <div class="field"><label for="s-under">Under folder</label><input id="s-under" placeholder="/home/me/reports"></div>
        <div class="field"><label for="s-types">File types</label><input id="s-types" placeholder="pdf, docx"></div>
        <div class="field"><label for="s-after">Modified after</label><input id="s-after" type="date"></div>
        <div class="field"><label for="s-before">Modified before</label><input id="s-before" type="date"></div>
      </div></details>
      <fieldset class="field modes"><legend>Mode</legend><div class="toggle">${SEARCH_MODES.map(([value, label, title], i) => `<label title="${esc(title)}"><input type="radio" name="s-mode" value="${esc(value)}"${i === 0 ? " checked" : ""}> ${esc(label)}</label>`).join("")}</div></fieldset>
      <label class="by-doc"><input type="checkbox" id="s-by-doc"> One result per document</label><div class="actions"><button class="primary" type="submit">Search</button><button type="button" id="s-sync" title="Make the collection mirror its folders now: new, changed, moved and deleted files">Sync</button></div>
    </form><p id="s-status" class="muted" role="status"></p><div id="results"></div>`;
  const select = document.getElementById("s-collection");
  try {
    const { collections } = await api("/api/collections");
    select.innerHTML = collections.map((c) => `<option value="${esc(c.name)}">${esc(c.name)} (${esc(c.documents)} documents)</option>`).join("");
    if (!collections.length) document.getElementById("s-status").textContent = "No collections yet: create a job on the Jobs page first.";
  } catch (error) { showError(document.getElementById("results"), error); }
  document.getElementById("s-sync").addEventListener("click", async () => {
    const info = document.getElementById("s-status");
    if (!select.value) return;
    try {
      const job = await api(`/api/collections/${enc(select.value)}/sync`, { method: "POST" });
      location.hash = `#/jobs/${enc(job.id)}`;
    } catch (error) {
      const running = error.code === "sync_running" && error.details && error.details.job_id;
      info.innerHTML = `<span class="error" role="alert">${esc(error.message)}</span>${running ? ` <a href="#/jobs/${esc(enc(error.details.job_id))}">Open that job</a>` : ""}`;
    }
  });
  document.getElementById("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const query = document.getElementById("s-query").value.trim();
    const info = document.getElementById("s-status"), results = document.getElementById("results");
    const mode = (document.querySelector('input[name="s-mode"]:checked') || {}).value || "hybrid";
    if (!query || !select.value) return;
    info.textContent = "Searching…"; results.innerHTML = "";
    try {
      const body = { query, collection: select.value, k: 10, mode, filters: searchFilters() };
      if (document.getElementById("s-by-doc").checked) body.group_by = "document";
      const data = await api("/api/search", { method: "POST", body });
      info.textContent = data.results.length ? `${data.results.length} results in ${data.took_ms} ms`
        : "No results. If the collection is still indexing, try again when its job has finished.";
      const more = (hit) => (hit.other_hits ? ` · <span class="more">+${esc(hit.other_hits)} more in this document</span>` : "");
      results.innerHTML = data.results.map((hit) => `<article class="hit"><div class="meta">${place(hit)}${more(hit)}</div><div class="meta"><b>${esc(Number(hit.score).toFixed(3))}</b> · <span class="path">${esc(hit.path)}</span> · chunk ${esc(hit.chunk_index)}${retrievers(hit)}${alsoAt(hit)}</div><div class="text">${marked(hit.snippet)}</div></article>`).join("");
    } catch (error) { info.textContent = ""; showError(results, error); }
  });
}

// ---- monitor ----------------------------------------------------------------------------------
async function monitorPage() {
  view.innerHTML = `<h1>Monitor</h1><div id="monitor"><p class="muted">Loading…</p></div>`;
  const refresh = async () => {
    const target = document.getElementById("monitor");
    if (!target) return;
    try {
      const m = await api("/api/monitor");
      const workers = m.workers || [];
      const gpus = m.gpus && m.gpus.slots ? m.gpus.slots : [];
      const waiting = m.gpus && m.gpus.waiters ? m.gpus.waiters.length : 0;
      target.innerHTML = `<div class="stats card">
          <div class="stat"><span class="muted">Workers alive</span><b>${esc(workers.length)}</b></div>
          <div class="stat"><span class="muted">Queue depth</span><b>${esc(m.queue ? m.queue.depth : "?")}</b></div>
          <div class="stat"><span class="muted">Oldest queued</span><b>${seconds(m.queue && m.queue.oldest_age_s)}</b></div>
          <div class="stat"><span class="muted">Running jobs</span><b>${esc(m.running_jobs.length)}</b></div>
          <div class="stat"><span class="muted">Chunks, last 5 min</span><b>${esc(m.throughput ? m.throughput.chunks_last_5_min : "?")}</b></div>
        </div>${m.redis !== "ok" ? `<p class="error">Redis: ${esc(m.redis)}</p>` : ""}
        <h2>Workers</h2>${workers.length ? `<div class="table-wrap"><table><thead><tr><th>Worker</th><th>Device</th><th>Current job</th><th>Done</th><th>Failed</th></tr></thead><tbody>
        ${workers.map((w) => `<tr><td>${esc(w.worker_id)}</td><td>${esc(w.device)}</td><td>${w.current_job ? `<a href="#/jobs/${esc(enc(w.current_job))}">${esc(String(w.current_job).slice(0, 8))}</a>` : "idle"}</td><td>${esc(w.jobs_done)}</td><td>${esc(w.jobs_failed)}</td></tr>`).join("")}
        </tbody></table></div>` : '<p class="muted">No worker is alive. Start one: <code>arq workers.main.WorkerSettings</code>.</p>'}
        <h2>GPU slots</h2>${gpus.length ? `<p class="muted">${esc(waiting)} waiting</p><ul>${gpus.map((s) => `<li>${esc(s.slot)}: ${s.state === "held" ? `held by ${esc(s.owner)} (job ${esc(s.job_id)}), expires ${esc(new Date(s.expires_at_ms).toLocaleTimeString())}` : "free"}</li>`).join("")}</ul>` : '<p class="muted">No GPUs configured.</p>'}
        <h2>Recent failures</h2>${m.recent_failures.length ? `<ul class="failures">${m.recent_failures.map((f) => `<li>${esc(f.kind)} <b>${esc(f.path || f.id)}</b>: ${esc(f.error)}</li>`).join("")}</ul>` : '<p class="muted">None.</p>'}`;
    } catch (error) { showError(target, error); }
  };
  await refresh();
  const timer = setInterval(refresh, 2000);
  cleanup = () => clearInterval(timer);
}

// ---- routing ----------------------------------------------------------------------------------
async function route() {
  cleanup(); cleanup = () => {};
  const [, page = "jobs", id] = location.hash.split("/");
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.nav === page);
  if (page === "jobs" && id) await jobPage(decodeURIComponent(id));
  else if (page === "search") await searchPage();
  else if (page === "monitor") await monitorPage();
  else await jobsPage();
  view.focus();
}

window.addEventListener("hashchange", route);
// Ask for the token (if the server wants one) before any WebSocket needs it.
api("/api/jobs?limit=1").catch(() => {}).finally(route);
