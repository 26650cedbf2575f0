"use strict";
// The admin page: asks for the admin token (kept in this tab's sessionStorage), then reads
// /api/admin/stats and /api/jobs every few seconds and draws the figures, the last hour's charts
// (plain SVG), the consumer groups and the batch jobs, with a form to submit one and a button to
// cancel each running one.

const TOKEN_KEY = "prism.adminToken";
const REFRESH_MS = 5000;
const HOUR_MS = 60 * 60 * 1000;
const MINUTE_MS = 60 * 1000;
const SVG = "http://www.w3.org/2000/svg";
// Pipeline order; a stage the gateway reports beyond these follows them.
const STAGE_ORDER = ["dedup", "thumbnail", "detect", "classify"];
// A job in these states has ended: nothing to cancel.
const ENDED_STATES = ["completed", "cancelled"];

const login = document.getElementById("login");
const dashboard = document.getElementById("dashboard");
const loginError = document.getElementById("login-error");
const loadError = document.getElementById("load-error");
const jobForm = document.getElementById("job-form");
const jobsTable = document.getElementById("jobs-table");
let timer = null;

function showLogin(message) {
  clearTimeout(timer);
  dashboard.hidden = true;
  login.hidden = false;
  loginError.textContent = message || "";
  document.getElementById("token").focus();
}

async function load() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    showLogin();
    return;
  }
  let response;
  try {
    response = await fetch("/api/admin/stats", { headers: adminHeaders(token) });
  } catch (error) {
    showLoadError(`The gateway does not answer (${error.message}); trying again.`);
    timer = setTimeout(load, REFRESH_MS);
    return;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("That token was not accepted.");
    return;
  }
  if (!response.ok) {
    showLoadError(`The statistics did not load (${response.status}); trying again.`);
    timer = setTimeout(load, REFRESH_MS);
    return;
  }
  const stats = await response.json();
  login.hidden = true;
  dashboard.hidden = false;
  loadError.hidden = true;
  render(stats);
  await loadJobs();
  timer = setTimeout(load, REFRESH_MS);
}

function adminHeaders(token) {
  return { Authorization: `Bearer ${token}`, Accept: "application/json" };
}

function showLoadError(message) {
  loadError.textContent = message;
  loadError.hidden = false;
}

function orderedStages(stages) {
  const rank = (name) => (STAGE_ORDER.includes(name) ? STAGE_ORDER.indexOf(name) : STAGE_ORDER.length);
  return Object.entries(stages).sort(([a], [b]) => rank(a) - rank(b) || a.localeCompare(b));
}

function render(stats) {
  const generated = new Date(stats.generated_at);
  const since = stats.started_at ? `; counting since ${new Date(stats.started_at).toLocaleString()}` : "";
  document.getElementById("updated").textContent = `Updated ${generated.toLocaleTimeString()}${since}`;
  const stages = orderedStages(stats.stages || {});
  renderStages(stages);
  const end = generated.getTime();
  drawChart(
    document.getElementById("throughput"),
    document.getElementById("throughput-legend"),
    stages.map(([name, stage]) => ({ name, points: perMinuteCounts(stage.per_minute || [], end) })),
    end,
  );
  drawChart(
    document.getElementById("latency"),
    document.getElementById("latency-legend"),
    stages
      .filter(([name]) => name !== "dedup")
      .map(([name, stage]) => ({
        name,
        points: (stage.per_minute || [])
          .filter((point) => point.latency_p95_ms != null)
          .map((point) => ({ t: Date.parse(point.minute), v: point.latency_p95_ms })),
      })),
    end,
  );
  renderGroups(stats.consumer_groups);
}

/** Every minute of the last hour, zero where the gateway left a quiet minute out. */
function perMinuteCounts(perMinute, end) {
  const counts = new Map(perMinute.map((point) => [Date.parse(point.minute), point.results]));
  const last = Math.floor(end / MINUTE_MS) * MINUTE_MS;
  const points = [];
  for (let t = last - HOUR_MS + MINUTE_MS; t <= last; t += MINUTE_MS) {
    points.push({ t, v: counts.get(t) || 0 });
  }
  return points;
}

/** "420 / 1210 / 1300 ms", or in seconds once any is 10 s or more. */
function durations(values) {
  const known = values.filter((v) => v != null);
  const inSeconds = known.some((v) => v >= 10000);
  const shown = values.map((v) => (v == null ? "–" : inSeconds ? (v / 1000).toFixed(1) : String(v)));
  return `${shown.join(" / ")} ${inSeconds ? "s" : "ms"}`;
}

function formatField(field, value) {
  if (value == null) {
    return "–";
  }
  switch (field) {
    case "deduplicated_share":
      return `${Math.round(value * 100)} %`;
    case "latency_ms":
      return durations([value.p50, value.p95, value.p99]);
    case "processing_ms":
      return durations([value.p50, value.p95]);
    case "batch_sizes":
      return typeof value === "object"
        ? Object.entries(value).map(([k, v]) => `${k}: ${v}`).join(", ")
        : String(value);
    default:
      return String(value);
  }
}

function renderStages(stages) {
  const container = document.getElementById("stages");
  const template = document.getElementById("stage-template");
  const panels = stages.map(([name, stage]) => {
    const panel = template.content.firstElementChild.cloneNode(true);
    panel.dataset.testid = `stage-${name}`;
    panel.setAttribute("aria-label", `Stage ${name}`);
    panel.querySelector(".stage-name").textContent = name;
    for (const dd of panel.querySelectorAll("dd[data-field]")) {
      const field = dd.dataset.field;
      dd.textContent = formatField(field, stage[field]);
      dd.dataset.testid = `${name}-${field.replaceAll("_", "-")}`;
    }
    panel.querySelector(".batch-sizes").hidden = stage.batch_sizes == null;
    const codes = Object.entries(stage.dead_letters_by_code || {});
    const reasons = stage.recent_dead_letters || [];
    panel.querySelector(".letters").hidden = codes.length === 0 && reasons.length === 0;
    panel.querySelector(".codes").replaceChildren(
      ...codes.map(([code, count]) => listItem(`${code}: ${count}`)),
    );
    panel.querySelector(".reasons").replaceChildren(
      ...reasons.map((letter) =>
        listItem(`${new Date(letter.failed_at).toLocaleTimeString()} ${letter.key ?? ""} (${letter.code}): ${letter.reason}`),
      ),
    );
    return panel;
  });
  container.replaceChildren(...panels);
  if (panels.length === 0) {
    container.append(listItem("No results yet.", "p"));
  }
}

function listItem(text, tag = "li") {
  const item = document.createElement(tag);
  item.textContent = text;
  return item;
}

function renderGroups(groups) {
  const body = document.getElementById("groups");
  const note = document.getElementById("groups-note");
  if (groups == null) {
    note.textContent = "No Kafka here (embedded mode).";
    note.hidden = false;
    body.replaceChildren();
    return;
  }
  note.hidden = true;
  body.replaceChildren(
    ...groups.map((group) => {
      const row = document.createElement("tr");
      const partitions = group.partitions.map((p) => `${p.partition}: ${p.lag}`).join(", ");
      const members = group.members == null
        ? "not described by the broker"
        : group.members.length === 0
          ? "none"
          : group.members.map((m) => `${m.client_id}@${m.host}`).join(", ");
      const cells = [group.group, group.topic, group.error ? "–" : String(group.lag), group.error || partitions || "–", members];
      for (const text of cells) {
        row.append(listItem(text, "td"));
      }
      return row;
    }),
  );
}

/**
 * An admin API request about batch jobs: {status, answer} (answer: the JSON body, or {} when it
 * has none); status 0 when the gateway did not answer. A refused token shows the sign-in.
 */
async function jobsRequest(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { ...adminHeaders(token), ...(options.headers || {}) };
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (error) {
    return { status: 0, answer: { reason: `The gateway does not answer (${error.message}).` } };
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("That token was not accepted.");
  }
  let answer = {};
  try {
    answer = await response.json();
  } catch {
    // A body that is not JSON (a timeout's plain text): the status says enough.
  }
  return { status: response.status, answer };
}

/** The batch jobs table; where the gateway has no job manager, its reason instead of the form. */
async function loadJobs() {
  const note = document.getElementById("jobs-note");
  const { status, answer } = await jobsRequest("/api/jobs");
  if (status === 401) {
    return;
  }
  if (status !== 200) {
    note.textContent = answer.reason || `The jobs did not load (${status}); trying again.`;
    note.hidden = false;
    // Nothing to show or submit where no job manager can run (the embedded mode).
    const noManager = answer.code === "no_job_manager";
    jobForm.hidden = noManager;
    jobsTable.hidden = noManager;
    return;
  }
  note.hidden = true;
  jobForm.hidden = false;
  jobsTable.hidden = false;
  renderJobs(answer.jobs);
}

function renderJobs(jobs) {
  const body = document.getElementById("jobs-rows");
  if (jobs.length === 0) {
    const cell = listItem("No jobs yet.", "td");
    cell.colSpan = 11;
    const row = document.createElement("tr");
    row.append(cell);
    body.replaceChildren(row);
    return;
  }
  body.replaceChildren(...jobs.map(jobRow));
}

/** One job's row: `view` is a JobView ({job, tally, finished, outcomes, rate_per_s, eta_s}). */
function jobRow(view) {
  const job = view.job;
  const running = !ENDED_STATES.includes(job.state);
  const row = document.createElement("tr");
  row.dataset.testid = `job-${job.id}`;
  const { done, deduplicated, failed } = view.outcomes;
  const eta = view.eta_s == null ? "" : `, ${view.eta_s} s left`;
  const cells = {
    id: job.id,
    name: job.name || "–",
    state: running && job.cancel_requested ? "cancelling" : job.state,
    prefix: job.prefix === "" ? "(whole bucket)" : job.prefix,
    stages: job.stages.join(", "),
    listed: job.listing.done ? String(job.listing.listed) : `${job.listing.listed}+`,
    finished: String(view.finished),
    outcomes: `${done} / ${deduplicated} / ${failed}`,
    rate: `${rate(view.rate_per_s)}/s${eta}`,
    submitted: new Date(job.submitted_at).toLocaleString(),
  };
  for (const [field, text] of Object.entries(cells)) {
    const cell = listItem(text, "td");
    cell.dataset.field = field;
    row.append(cell);
  }
  const action = document.createElement("td");
  if (running && !job.cancel_requested) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small";
    button.textContent = "Cancel";
    button.setAttribute("aria-label", `Cancel job ${job.id}`);
    button.dataset.testid = `cancel-${job.id}`;
    button.addEventListener("click", () => cancelJob(job.id, button));
    action.append(button);
  }
  row.append(action);
  return row;
}

/** Objects per second, with two significant digits below 10. */
function rate(perSecond) {
  return perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toPrecision(2);
}

function showJobMessage(text, failed) {
  const message = document.getElementById("job-message");
  message.textContent = text;
  message.classList.toggle("error", failed);
}

async function cancelJob(id, button) {
  button.disabled = true;
  const { status, answer } = await jobsRequest(`/api/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
  if (status === 200) {
    showJobMessage(`Job ${id}: cancel requested; the job manager stops it on its next round.`, false);
  } else if (status !== 401) {
    showJobMessage(answer.reason || `The job was not cancelled (${status}).`, true);
  }
  await loadJobs();
}

jobForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(jobForm);
  const submission = { prefix: form.get("prefix"), stages: form.getAll("stages") };
  const minutes = Number(form.get("deadline"));
  if (minutes > 0) {
    submission.deadline_s = Math.round(minutes * 60);
  }
  const name = form.get("name").trim();
  if (name) {
    submission.name = name;
  }
  const button = jobForm.querySelector("button[type=submit]");
  button.disabled = true;
  const { status, answer } = await jobsRequest("/api/jobs", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(submission),
  });
  button.disabled = false;
  if (status === 201) {
    showJobMessage(`Job ${answer.id} submitted.`, false);
    jobForm.reset();
    await loadJobs();
  } else if (status !== 401) {
    showJobMessage(answer.reason || `The job was not submitted (${status}).`, true);
  }
});

function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    element.setAttribute(name, value);
  }
  if (text != null) {
    element.textContent = text;
  }
  return element;
}

/** Lines of `series` ([{name, points: [{t, v}]}]) over the hour before `end`. */
function drawChart(target, legend, series, end) {
  const [width, height] = [600, 220];
  const margin = { left: 48, right: 12, top: 10, bottom: 26 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const start = end - HOUR_MS;
  const highest = Math.max(1, ...series.flatMap((s) => s.points.map((p) => p.v)));
  const x = (t) => margin.left + ((t - start) / HOUR_MS) * plotWidth;
  const y = (v) => margin.top + plotHeight - (v / highest) * plotHeight;
  const parts = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = highest * fraction;
    parts.push(svg("line", { class: "axis", x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }));
    parts.push(svg("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end" }, Math.round(value)));
  }
  for (const [minutesAgo, anchor] of [[60, "start"], [30, "middle"], [0, "end"]]) {
    const label = minutesAgo === 0 ? "now" : `−${minutesAgo} min`;
    parts.push(svg("text", { x: x(end - minutesAgo * MINUTE_MS), y: height - 6, "text-anchor": anchor }, label));
  }
  series.forEach((line, index) => {
    const points = line.points.filter((p) => p.t >= start && p.t <= end);
    const className = `line series-${index % 3}`;
    if (points.length > 1) {
      parts.push(svg("polyline", { class: className, points: points.map((p) => `${x(p.t)},${y(p.v)}`).join(" ") }));
    }
    for (const point of points.length === 1 ? points : []) {
      parts.push(svg("circle", { class: className, cx: x(point.t), cy: y(point.v), r: 3 }));
    }
  });
  target.replaceChildren(...parts);
  legend.replaceChildren(
    ...series.map((line, index) => {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = `var(--${["accent", "ok", "seen"][index % 3]})`;
      item.append(swatch, line.name);
      return item;
    }),
  );
}

login.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  load();
});
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
});
// No refreshing while the tab is hidden; catch up when it shows again.
document.addEventListener("visibilitychange", () => {
  clearTimeout(timer);
  if (!document.hidden && sessionStorage.getItem(TOKEN_KEY)) {
    load();
  }
});
load();
