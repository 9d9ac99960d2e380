// The live board: renders each snapshot the node pushes over server-sent events (api/events); no library, no CDN.
"use strict";
const colors = ["#1d4ed8", "#b45309", "#15803d", "#7c3aed", "#b91c1c"];

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }

function bytes(b) {
  return b >= 1048576 ? (b / 1048576).toFixed(2) + " MiB" : b >= 1024 ? (b / 1024).toFixed(1) + " KiB" : b + " B";
}

function time(iso) { return new Date(iso).toLocaleTimeString(); }

// A line chart of per-round series as inline SVG: [{ name, points: [[round, value], ...] }].
function chart(id, title, series, fmt) {
  const W = 320, H = 150, L = 44, R = 8, T = 10, B = 22;
  const all = series.flatMap(s => s.points);
  const count = series.length ? series[0].points.length : 0;
  let body;
  if (!all.length) {
    body = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no completed round yet</text>`;
  } else {
    const xs = all.map(p => p[0]), ys = all.map(p => p[1]);
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)], [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const X = x => L + (x - x0) / (x1 - x0) * (W - L - R), Y = y => T + (y1 - y) / (y1 - y0) * (H - T - B);
    body = `<line class="axis" x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}"/><line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>` +
      `<text x="${L - 4}" y="${T + 8}" text-anchor="end">${esc(fmt(y1))}</text><text x="${L - 4}" y="${H - B}" text-anchor="end">${esc(fmt(y0))}</text>` +
      [...new Set(xs)].map(x => `<text x="${X(x)}" y="${H - 6}" text-anchor="middle">${x}</text>`).join("") +
      series.map((s, i) => {
        const c = colors[i % colors.length];
        const pts = s.points.map(p => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
        return `<polyline fill="none" stroke="${c}" stroke-width="2" points="${pts}"/>` +
          s.points.map(p => `<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="3" fill="${c}"><title>${esc(s.name)} round ${p[0]}: ${esc(fmt(p[1]))}</title></circle>`).join("");
      }).join("");
  }
  const legend = series.length > 1 ? `<div class="legend">${series.map((s, i) => `<span><i style="background:${colors[i % colors.length]}"></i>${esc(s.name)}</span>`).join("")}</div>` : "";
  return `<figure><figcaption>${esc(title)}</figcaption><svg class="chart" data-chart="${id}" data-points="${count}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${body}</svg>${legend}</figure>`;
}

function series(rounds, name, pick) {
  return { name, points: rounds.map(r => [r.round, num(pick(r))]).filter(p => p[1] !== null) };
}

// A buffered job (FedBuff): the version, how full the buffer is, and who trains from which version.
function buffer(job) {
  const b = job.buffer;
  if (!b) return "";
  const rows = b.inFlight.map(w => `<tr data-party="${esc(w.org)}" data-state="training"><td>${esc(w.org)}</td><td class="num">${w.updateId}</td>` +
    `<td class="num">${w.baseVersion}</td><td class="num">${b.version - w.baseVersion}</td><td class="mute">${esc(w.progress ?? "")}</td></tr>`).join("");
  return `<h3>Version ${b.version} <span class="mute">buffered · buffer ${b.filled} / ${b.size}</span></h3>` +
    `<div class="progress" title="${b.filled} of ${b.size} updates buffered"><div style="width:${Math.round(100 * b.filled / b.size)}%"></div></div>` +
    `<table class="parties"><thead><tr><th>party</th><th>update</th><th>from version</th><th>staleness so far</th><th>progress</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function current(job) {
  const c = job.current;
  if (!c) return buffer(job);
  const rows = c.parties.map(p =>
    `<tr data-party="${esc(p.org)}" data-state="${esc(p.state)}"><td>${esc(p.org)}</td><td><span class="badge s-${esc(p.state)}">${esc(p.state)}</span></td>` +
    `<td class="${["rejected", "dropped", "failed"].includes(p.state) ? "reason" : "mute"}">${esc(p.detail)}</td></tr>`).join("");
  const sa = c.secureAggregation;
  const secure = sa ? `<p>Secure aggregation, step <b>${esc(sa.step)}</b>: answered ${esc(sa.answered.join(", ") || "none yet")}; waiting for ${esc(sa.waiting.join(", ") || "no one")}</p>` : "";
  return `<h3>Round ${c.round} <span class="mute">attempt ${c.attempt} · exchange ${c.exchange} · ${esc(c.stage)}</span></h3>` +
    `<table class="parties"><thead><tr><th>party</th><th>state</th><th>progress / reason</th></tr></thead><tbody>${rows}</tbody></table>${secure}`;
}

function outcomes(r) {
  return r.outcomes.map(p => `<span class="badge s-${esc(p.state)}" data-party="${esc(p.org)}" data-state="${esc(p.state)}"` +
    ` title="${esc(p.detail ?? "")}">${esc(p.org)}${p.state === "done" ? "" : ": " + esc(p.state)}</span>`).join(" ");
}

function roundsTable(job) {
  if (!job.rounds.length) return "";
  const buffered = job.rounds.some(r => (r.buffer ?? []).length);
  const rows = job.rounds.slice().reverse().map(r =>
    `<tr data-round="${r.round}"><td class="num">${r.round}</td><td class="num">${r.attempt}</td><td class="num">${r.seconds.toFixed(1)} s</td>` +
    `<td class="num">${num(r.loss) === null ? "–" : r.loss.toFixed(3)}</td><td class="num">${num(r.evalLoss) === null ? "–" : r.evalLoss.toFixed(3)}</td>` +
    `<td class="num">${bytes(r.bytes)}</td><td>${outcomes(r)}</td><td class="num">${r.rejected}</td>` +
    `<td class="num">${num(r.epsilon) === null ? "–" : r.epsilon.toFixed(2)}</td><td>${esc(r.secureAggregation ?? "")}</td>` +
    (buffered ? `<td>${(r.buffer ?? []).map(c => `<span title="update ${c.updateId} from version ${c.baseVersion}, weight ${c.weight.toFixed(2)}">${esc(c.org)} s=${c.staleness}</span>`).join(" ")}</td>` : "") +
    `</tr>`).join("");
  return `<h3>${buffered ? "Versions" : "Rounds"}</h3><table><thead><tr><th>${buffered ? "version" : "round"}</th><th>attempt</th><th>time</th><th>loss</th><th>dev loss</th><th>bytes</th><th>parties</th>` +
    `<th>rejected updates</th><th>ε</th><th>secure aggregation</th>${buffered ? "<th>staleness</th>" : ""}</tr></thead><tbody>${rows}</tbody></table>`;
}

function evaluation(job) {
  if (!job.finalEvaluation.length) return "";
  const f = v => num(v) === null ? "–" : v.toFixed(2);
  const rows = job.finalEvaluation.map(e => `<tr><td>${esc(e.org)}</td><td class="num">${f(e.loss)}</td><td class="num">${f(e.perplexity)}</td>` +
    `<td class="num">${f(e.rougeL)}</td><td class="num">${f(e.bleu4)}</td><td class="num">${e.samples}</td></tr>`).join("");
  return `<h3>Final evaluation</h3><table><thead><tr><th>party</th><th>loss</th><th>perplexity</th><th>ROUGE-L</th><th>BLEU-4</th><th>examples</th></tr></thead><tbody>${rows}</tbody></table>` +
    tasks(job);
}

// Each evaluation task's document-weighted aggregate (computed by the arbiter), then every party's own figures.
function tasks(job) {
  if (!(job.tasks ?? []).length) return "";
  const cell = (s, m) => m in s.metrics ? s.metrics[m].toFixed(4) + (m in s.stdErr ? ` ± ${s.stdErr[m].toFixed(4)}` : "") : "–";
  const rows = job.tasks.map(t => {
    const metrics = Object.keys(t.metrics);
    const parties = job.finalEvaluation.flatMap(e => e.tasks.filter(x => x.task === t.task).map(x => [e.org, x]));
    return metrics.map(m => `<tr><td>${esc(t.task)}</td><td>${esc(m)}</td><td class="num">${cell(t, m)}</td><td class="num">${t.documents}</td>` +
      `<td>${parties.map(([org, x]) => `${esc(org)} ${cell(x, m)} (n ${x.documents})`).join("<br>")}</td></tr>`).join("");
  }).join("");
  return `<h3>Evaluation tasks</h3><table class="tasks"><thead><tr><th>task</th><th>metric</th><th>all parties</th><th>documents</th><th>each party</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function job(j) {
  const pct = j.totalRounds ? Math.round(100 * j.completedRounds / j.totalRounds) : 0;
  const charts = [chart("loss", "loss per round", [series(j.rounds, "training", r => r.loss), series(j.rounds, "dev", r => r.evalLoss)], v => v.toFixed(3)),
    chart("bytes", "bytes moved per round (up + down)", [series(j.rounds, "bytes", r => r.bytes)], bytes)];
  if (j.rounds.some(r => num(r.epsilon) !== null) || num(j.epsilon) !== null)
    charts.push(chart("epsilon", "ε spent (cumulative)", [series(j.rounds, "ε", r => r.epsilon)], v => v.toFixed(2)));
  return `<article class="job" data-job="${esc(j.jobId)}" data-state="${esc(j.state)}"><header><h2>${esc(j.jobId)}</h2>` +
    `<span class="badge s-${esc(j.state)}">${esc(j.state)}</span><span class="mute">${esc(j.algorithm ?? "")}</span>` +
    `<div class="progress" title="${j.completedRounds} of ${j.totalRounds} rounds"><div style="width:${pct}%"></div></div>` +
    `<span>${j.completedRounds} / ${j.totalRounds} rounds</span>${num(j.epsilon) === null ? "" : `<span>ε ${j.epsilon.toFixed(2)}</span>`}</header>` +
    (j.reason ? `<p class="reason">${esc(j.reason)}</p>` : "") + current(j) + `<div class="charts">${charts.join("")}</div>` + roundsTable(j) + evaluation(j) +
    (j.outputDir ? `<p class="mute">outputs: ${esc(j.outputDir)}</p>` : "") + `</article>`;
}

function render(s) {
  document.getElementById("jobs").innerHTML = s.jobs.length ? s.jobs.map(job).join("") : `<p class="empty">No job yet.</p>`;
  document.querySelector("#members tbody").innerHTML = s.members.map(m => {
    const state = m.reachable ? m.status : "unreachable";
    return `<tr data-member="${esc(m.address)}" data-state="${esc(state)}"><td>${esc(m.address)}</td><td>${esc(m.roles.join(", "))}</td>` +
      `<td>${esc(m.version ?? "")}</td><td data-wire="${esc(m.wire ?? "none")}">${esc(m.wire ?? "none")}</td>` +
      `<td><span class="badge s-${esc(state)}">${esc(state)}</span></td></tr>`;
  }).join("");
  document.getElementById("events").innerHTML = s.events.map(e => `<li class="${esc(e.level)}"><time>${time(e.at)}</time>${esc(e.text)}</li>`).join("");
  document.getElementById("updated").textContent = `updated ${time(s.at)} · v${s.version}`;
  document.body.dataset.version = s.version;
}

function connect() {
  const conn = document.getElementById("conn");
  const source = new EventSource("api/events");
  source.addEventListener("board", e => {
    conn.dataset.state = "live";
    conn.textContent = "live";
    render(JSON.parse(e.data));
  });
  source.onerror = () => { conn.dataset.state = "reconnecting"; conn.textContent = "reconnecting…"; };
}

// The current state at once (the stream then keeps it live).
fetch("api/board").then(r => r.ok ? r.json() : null).then(s => { if (s) render(s); }).catch(() => {});
connect();
