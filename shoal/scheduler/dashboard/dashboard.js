// The shoal dashboard: polls /api/v1/dashboard once a second and draws it.
// The server sends aggregates only (counts by state and by key prefix, workers,
// the runs since the last poll), so a page costs the same with a million tasks.
// Every string from the cluster goes in through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const STREAM_WINDOW_S = 30;
const STATES = ["waiting", "queued", "processing", "memory", "erred", "released"];
const COLORS = ["#3f7fd9", "#2f9e6b", "#e08a2e", "#8a5cc7", "#c94f7c", "#3aa6a6",
                "#b8a22b", "#6b7385", "#d9534f", "#5a8f29"];

let since = 0;            // the scheduler-clock time of the newest run seen
let runs = [];            // runs of the last STREAM_WINDOW_S seconds, for the canvas
let lastNow = 0;
const prefixColor = new Map();

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function bytes(n) {
  if (!n) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function colorOf(prefix) {
  if (!prefixColor.has(prefix)) prefixColor.set(prefix, COLORS[prefixColor.size % COLORS.length]);
  return prefixColor.get(prefix);
}

function setText(id, value) {
  const node = document.getElementById(id);
  if (node.textContent !== String(value)) node.textContent = String(value);
}

function drawSummary(d) {
  setText("address", d.address);
  setText("workers-count", d.workers.length);
  setText("threads-count", d.workers.reduce((n, w) => n + w.nthreads, 0));
  setText("clients-count", d.clients);
  setText("desired-workers", d.desired_workers);
  setText("runs-count", d.runs);
  for (const state of STATES) setText(`count-${state}`, d.tasks[state] ?? 0);
}

function segment(cls, n, total, title) {
  const span = el("span", null, cls);
  span.style.width = `${total ? (100 * n) / total : 0}%`;
  span.title = `${n} ${title}`;
  return span;
}

function drawProgress(d) {
  const body = document.querySelector("#progress tbody");
  const rows = [];
  for (const p of d.prefixes) {
    const s = p.states;
    // Finished: every task of the prefix that is neither to run nor failed now.
    const done = Math.max(0, p.total - p.active - s.erred);
    const total = p.total;
    const tr = el("tr");
    tr.dataset.prefix = p.prefix;
    tr.appendChild(el("td", p.prefix, "name"));
    const barCell = el("td");
    const bar = el("div", null, "bar");
    bar.appendChild(segment("done", done, total, "finished"));
    bar.appendChild(segment("processing", s.processing, total, "processing"));
    bar.appendChild(segment("queued", s.queued, total, "queued"));
    bar.appendChild(segment("waiting", s.waiting, total, "waiting"));
    bar.appendChild(segment("erred", s.erred, total, "erred"));
    barCell.appendChild(bar);
    tr.appendChild(barCell);
    const numbers = el("td", `${done} / ${total}` + (s.erred ? `, ${s.erred} erred` : ""), "numbers");
    numbers.dataset.done = done;
    numbers.dataset.total = total;
    tr.appendChild(numbers);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const hidden = d.prefix_count - d.prefixes.length;
  setText("progress-more", hidden > 0 ? `and ${hidden} more prefixes` : "");
}

function meter(fraction, managedFraction) {
  const box = el("span", null, "meter");
  const used = el("span");
  used.style.width = `${Math.min(100, 100 * fraction)}%`;
  box.appendChild(used);
  if (managedFraction !== undefined) {
    const managed = el("span", null, "managed");
    managed.style.width = `${Math.min(100, 100 * managedFraction)}%`;
    box.appendChild(managed);
  }
  return box;
}

function drawWorkers(d) {
  const body = document.querySelector("#workers tbody");
  // Without a limit, memory is drawn against the largest worker's.
  const largest = Math.max(1, ...d.workers.map((w) => w.memory));
  const rows = d.workers.map((w) => {
    const tr = el("tr");
    tr.dataset.worker = w.name;
    tr.appendChild(el("td", w.name));
    tr.appendChild(el("td", w.address));
    tr.appendChild(el("td", w.nthreads));
    const cpu = el("td");
    cpu.appendChild(meter(w.cpu / 100 / Math.max(1, w.nthreads)));
    cpu.appendChild(el("span", ` ${Math.round(w.cpu)}%`));
    tr.appendChild(cpu);
    const memory = el("td");
    const scale = w.memory_limit || largest;
    memory.appendChild(meter(w.memory / scale, w.managed / scale));
    memory.appendChild(el("span", ` ${bytes(w.memory)}` + (w.memory_limit ? ` / ${bytes(w.memory_limit)}` : "")));
    tr.appendChild(memory);
    tr.appendChild(el("td", `${bytes(w.managed)} (${w.keys})`));
    tr.appendChild(el("td", w.processing, "processing"));
    tr.appendChild(el("td", w.executing));
    const link = el("td");
    if (w.http_address) {
      const a = el("a", "metrics");
      a.href = `${w.http_address}/metrics`;
      link.appendChild(a);
    }
    tr.appendChild(link);
    return tr;
  });
  body.replaceChildren(...rows);
}

function drawStream(d) {
  for (const run of d.stream) {
    runs.push(run);
    since = Math.max(since, run.stop);
  }
  lastNow = d.now;
  runs = runs.filter((r) => r.stop >= d.now - STREAM_WINDOW_S);
  const canvas = document.getElementById("stream");
  canvas.dataset.runs = String(runs.length);
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 1200;
  const height = canvas.clientHeight || 160;
  if (canvas.width !== width * ratio) { canvas.width = width * ratio; canvas.height = height * ratio; }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const names = d.workers.map((w) => w.name);
  for (const r of runs) if (!names.includes(r.worker)) names.push(r.worker);
  const rowH = Math.max(4, Math.min(24, (height - 16) / Math.max(1, names.length)));
  const start = d.now - STREAM_WINDOW_S;
  const x = (t) => ((t - start) / STREAM_WINDOW_S) * width;
  ctx.font = "11px system-ui, sans-serif";
  for (const r of runs) {
    const row = names.indexOf(r.worker);
    ctx.fillStyle = r.ok ? colorOf(r.prefix) : "#d9534f";
    const x0 = x(r.start);
    ctx.fillRect(x0, 4 + row * rowH, Math.max(1, x(r.stop) - x0), rowH - 2);
  }
  ctx.fillStyle = "#6b7385";
  names.forEach((name, row) => ctx.fillText(name, 4, 4 + row * rowH + Math.min(rowH - 3, 12)));
  ctx.fillText(`-${STREAM_WINDOW_S} s`, 4, height - 3);
  ctx.fillText("now", width - 26, height - 3);
}

function drawList(id, items, text) {
  const list = document.getElementById(id);
  list.replaceChildren(...items.map((item) => el("li", text(item))));
}

function drawWarnings(d) {
  document.getElementById("warnings-section").hidden = d.warnings.length === 0;
  drawList("warnings", d.warnings, (w) => {
    const ago = Math.max(0, d.now - w.since);
    return `${w.text} (${ago.toFixed(0)} s ago)`;
  });
}

function drawEvents(d) {
  const recent = d.events.slice().reverse();
  drawList("events", recent, (e) => {
    const ago = Math.max(0, d.now - e.time);
    const fields = Object.entries(e).filter(([k]) => !["n", "time", "kind"].includes(k))
      .map(([k, v]) => `${k}=${v}`).join(" ");
    return `${ago.toFixed(0)} s ago: ${e.kind} ${fields}`;
  });
}

async function poll() {
  try {
    const answer = await fetch(`/api/v1/dashboard?since=${since}`, { cache: "no-store" });
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const d = await answer.json();
    drawSummary(d);
    drawWarnings(d);
    drawProgress(d);
    drawWorkers(d);
    drawStream(d);
    drawEvents(d);
    const status = document.getElementById("status");
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (err) {
    setText("status", `cannot reach the scheduler: ${err.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
