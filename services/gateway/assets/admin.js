"use strict";
// The admin page: asks for the admin token (kept in this tab's sessionStorage), then reads
// /api/admin/stats every few seconds and draws the figures, the last hour's charts (plain SVG)
// and the consumer groups.

const TOKEN_KEY = "prism.adminToken";
const REFRESH_MS = 5000;
const HOUR_MS = 60 * 60 * 1000;
const MINUTE_MS = 60 * 1000;
const SVG = "http://www.w3.org/2000/svg";
// Pipeline order; a stage the gateway reports beyond these follows them.
const STAGE_ORDER = ["dedup", "thumbnail", "detect", "classify"];

const login = document.getElementById("login");
const dashboard = document.getElementById("dashboard");
const loginError = document.getElementById("login-error");
const loadError = document.getElementById("load-error");
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
    response = await fetch("/api/admin/stats", {
      headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
    });
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
  timer = setTimeout(load, REFRESH_MS);
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
