"use strict";
// The upload page: sends each picked or dropped file to the gateway as its raw body, then fills
// in its card from the session's one Server-Sent Events stream (browsers allow only six HTTP/1.1
// connections per host, so one stream serves every card). The cards of this tab's session are
// kept in sessionStorage and fetched again from the gateway on reload.

const SESSION_KEY = "prism.session";
const UPLOADS_KEY = "prism.uploads";
// A few uploads at once leave connections free for the event stream and the result images.
const PARALLEL_UPLOADS = 3;

const session = sessionStorage.getItem(SESSION_KEY) || newSessionId();
sessionStorage.setItem(SESSION_KEY, session);

const cardsList = document.getElementById("cards");
const template = document.getElementById("card-template");
const connection = document.getElementById("connection");
const emptyNote = document.getElementById("empty");

/** Cards by the object key the gateway stored the upload under. */
const cardsByKey = new Map();
/** Events that arrived before their upload's POST answered, by key. */
const earlyEvents = new Map();
let uploadsInFlight = 0;
const queue = [];

// crypto.randomUUID needs a secure context; a phone on the LAN reaches the page over plain http.
function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function storedUploads() {
  try {
    return JSON.parse(sessionStorage.getItem(UPLOADS_KEY)) || [];
  } catch {
    return [];
  }
}

function remember(entry) {
  const entries = storedUploads();
  entries.push(entry);
  sessionStorage.setItem(UPLOADS_KEY, JSON.stringify(entries));
}

function part(card, selector) {
  return card.element.querySelector(selector);
}

function addCard(name) {
  const element = template.content.firstElementChild.cloneNode(true);
  element.querySelector(".card-name").textContent = name;
  cardsList.prepend(element);
  emptyNote.hidden = true;
  return { element, name, key: null, url: null, stages: new Set(), failed: false };
}

function setStatus(card, state, text) {
  card.element.dataset.state = state;
  part(card, ".card-status").textContent = text;
}

function register(card, stored) {
  card.key = stored.key;
  card.url = stored.url;
  card.element.dataset.key = stored.key;
  cardsByKey.set(stored.key, card);
  setStatus(card, "processing", "Processing…");
  for (const event of earlyEvents.get(stored.key) || []) {
    applyEvent(card, event.type, event.data);
  }
  earlyEvents.delete(stored.key);
}

async function errorText(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return body.reason || body.error || body.message || text;
  } catch {
    return text || response.statusText;
  }
}

async function upload(file) {
  const card = addCard(file.name);
  const query = new URLSearchParams({ name: file.name, session });
  try {
    const response = await fetch(`/api/uploads?${query}`, {
      method: "POST",
      body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" },
    });
    if (!response.ok) {
      const reason = response.status === 413 ? "The file is larger than this server accepts." : await errorText(response);
      setStatus(card, "rejected", `Not uploaded (${response.status}): ${reason}`);
      return;
    }
    const stored = await response.json();
    remember({ name: file.name, key: stored.key, url: stored.url });
    register(card, stored);
    // Anything that arrived while the stream was reconnecting is in the upload's record.
    await refresh(card);
  } catch (error) {
    setStatus(card, "rejected", `Not uploaded: ${error.message}`);
  }
}

function pump() {
  while (uploadsInFlight < PARALLEL_UPLOADS && queue.length > 0) {
    uploadsInFlight += 1;
    upload(queue.shift()).finally(() => {
      uploadsInFlight -= 1;
      pump();
    });
  }
}

function enqueue(files) {
  queue.push(...files);
  pump();
}

/** Applies the upload's record (every result so far, its dead letter) from the gateway. */
async function refresh(card) {
  const response = await fetch(card.url, { headers: { Accept: "application/json" } });
  if (response.status === 404) {
    setStatus(card, "gone", "This upload is no longer stored.");
    return;
  }
  if (!response.ok) {
    return;
  }
  const view = await response.json();
  for (const result of Object.values(view.results || {})) {
    applyEvent(card, "result", result);
  }
  if (view.dead_letter) {
    applyEvent(card, "dead_letter", view.dead_letter);
  }
}

function applyEvent(card, type, data) {
  if (type === "dead_letter") {
    showDeadLetter(card, data);
  } else {
    showResult(card, data);
  }
}

function showDeadLetter(card, letter) {
  card.failed = true;
  const box = part(card, "[data-testid=dead-letter]");
  part(card, ".failure-code").textContent = letter.code;
  part(card, ".failure-reason").textContent = letter.reason;
  box.hidden = false;
  setStatus(card, "failed", `Stopped at ${letter.stage}.`);
}

function showResult(card, result) {
  card.stages.add(result.stage);
  card.element.dataset.stages = [...card.stages].sort().join(" ");
  if (result.deduplicated) {
    part(card, "[data-testid=seen-before]").hidden = false;
  }
  const payload = { ...result.payload, ...result };
  if (result.stage === "thumbnail") {
    showThumbnails(card, result.outputs || []);
  } else if (result.stage === "detect") {
    showDetections(card, result.outputs || [], payload.detections || []);
  } else if (Array.isArray(payload.classes)) {
    showClasses(card, payload.classes);
  }
  if (!card.failed) {
    const done = [...card.stages].sort().join(", ");
    setStatus(card, "done", `Done: ${done}${result.deduplicated ? " (earlier results reused)" : ""}.`);
  }
}

function showThumbnails(card, outputs) {
  const images = outputs.filter((o) => o.content_type.startsWith("image/"));
  // One picture per size: JPEG where a size also has a WebP twin.
  const bySize = new Map();
  for (const output of images) {
    const size = Math.max(output.width || 0, output.height || 0);
    if (!bySize.has(size) || output.content_type === "image/jpeg") {
      bySize.set(size, output);
    }
  }
  const list = part(card, ".thumb-list");
  list.replaceChildren();
  for (const [size, output] of [...bySize].sort((a, b) => a[0] - b[0])) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = output.url;
    link.target = "_blank";
    link.rel = "noopener";
    const image = document.createElement("img");
    image.src = output.url;
    image.alt = `Thumbnail, ${output.width}×${output.height}`;
    image.width = output.width;
    image.height = output.height;
    image.dataset.testid = "thumbnail";
    const caption = document.createElement("span");
    caption.textContent = `${size} px`;
    link.append(image);
    item.append(link, caption);
    list.append(item);
  }
  part(card, "[data-testid=thumbnails]").hidden = images.length === 0;
}

function formatScore(score) {
  return typeof score === "number" ? score.toFixed(2) : "";
}

function showDetections(card, outputs, detections) {
  const annotated = outputs.find((o) => o.key.endsWith("annotated.jpg"));
  if (annotated) {
    const image = part(card, "[data-testid=annotated]");
    image.src = annotated.url;
    image.alt = `${card.name} with ${detections.length} detected objects outlined`;
    if (annotated.width) {
      image.width = annotated.width;
      image.height = annotated.height;
    }
    part(card, ".annotated-link").href = annotated.url;
    part(card, ".annotated").hidden = false;
  }
  const rows = [...detections]
    .sort((a, b) => (b.confidence ?? b.score) - (a.confidence ?? a.score))
    .map((detection) => {
      const row = document.createElement("tr");
      row.dataset.testid = "detection";
      const box = detection.box || {};
      const cells = [
        detection.class,
        formatScore(detection.confidence ?? detection.score),
        [box.x1, box.y1, box.x2, box.y2].map((v) => Math.round(v)).join(", "),
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      row.cells[0].dataset.testid = "detection-class";
      return row;
    });
  part(card, "[data-testid=detections] tbody").replaceChildren(...rows);
  part(card, ".detections-title").textContent = `Objects: ${summary(detections)}`;
  part(card, ".detections").hidden = false;
}

/** "4 person, 1 bus" */
function summary(detections) {
  if (detections.length === 0) {
    return "none found";
  }
  const counts = new Map();
  for (const detection of detections) {
    counts.set(detection.class, (counts.get(detection.class) || 0) + 1);
  }
  return [...counts].map(([name, count]) => `${count} ${name}`).join(", ");
}

/** A classify stage's labels: `[{"class"|"label", "score"|"confidence"}]`. */
function showClasses(card, classes) {
  const items = classes.map((entry) => {
    const item = document.createElement("li");
    const label = entry.class ?? entry.label ?? String(entry);
    const score = formatScore(entry.score ?? entry.confidence);
    item.textContent = score ? `${label} (${score})` : label;
    return item;
  });
  part(card, ".class-list").replaceChildren(...items);
  part(card, "[data-testid=classes]").hidden = items.length === 0;
}

function onStreamEvent(type, message) {
  const data = JSON.parse(message.data);
  const key = data.source && data.source.key;
  if (!key) {
    return;
  }
  const card = cardsByKey.get(key);
  if (card) {
    applyEvent(card, type, data);
  } else if (uploadsInFlight > 0) {
    const waiting = earlyEvents.get(key) || [];
    waiting.push({ type, data });
    earlyEvents.set(key, waiting);
  }
}

function connect() {
  const stream = new EventSource(`/api/sessions/${encodeURIComponent(session)}/events`);
  let wasOpen = false;
  stream.addEventListener("result", (message) => onStreamEvent("result", message));
  stream.addEventListener("dead_letter", (message) => onStreamEvent("dead_letter", message));
  stream.addEventListener("open", () => {
    connection.textContent = "Live: results appear as they arrive.";
    connection.dataset.state = "live";
    // Results may have arrived while the stream was down: read the records of unfinished cards.
    if (wasOpen) {
      for (const card of cardsByKey.values()) {
        refresh(card);
      }
    }
    wasOpen = true;
  });
  stream.addEventListener("error", () => {
    connection.textContent = "Connection lost, reconnecting…";
    connection.dataset.state = "reconnecting";
  });
}

function restore() {
  for (const entry of storedUploads()) {
    const card = addCard(entry.name);
    register(card, entry);
    refresh(card);
  }
}

function setUpPicker() {
  const input = document.getElementById("files");
  const zone = document.getElementById("picker");
  input.addEventListener("change", () => {
    enqueue([...input.files]);
    input.value = "";
  });
  // The whole window accepts a drop, so a near miss does not open the file in the tab.
  let depth = 0;
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    zone.classList.toggle("dragging", depth > 0);
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.classList.remove("dragging");
    enqueue([...event.dataTransfer.files]);
  });
  document.getElementById("clear").addEventListener("click", () => {
    sessionStorage.removeItem(UPLOADS_KEY);
    cardsByKey.clear();
    cardsList.replaceChildren();
    emptyNote.hidden = false;
  });
}

setUpPicker();
restore();
connect();
