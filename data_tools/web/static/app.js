// The page of `toolkit serve`: browse or search, the whole collection on a map, lasso / click / keys to judge,
// review the map's selection, submit, refine.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  classFilter: null,    // a label: searches, the browse grid and the map's lasso keep only images carrying it
  query: null,          // {text} | {vector} | {id}: what `refine` starts from; null while browsing
  results: [],          // the grid: [{rank, id, image, score, class}]
  browse: null,         // {offset, total} while the grid browses the collection
  marks: new Map(),     // id -> "lasso" | "select" | "deselect": the user's judgements, kept until Clear
  lassoed: new Set(),   // ids a lasso took in, kept when then deselected: the lasso event records what was lassoed
  names: new Map(),     // id -> image name, of every image shown or selected (events name images)
  sent: new Map(),      // "class\tid" -> "lasso" | "keep" | "deselect": what the last Submits told the server
  judged: new Map(),    // id -> true (kept) | false (deselected): every round since the query, for `refine`
  review: [],           // ids of the map's lasso selection, in the order they came
  reviewShown: 0,
  session: "s-" + Math.random().toString(36).slice(2, 10),
  sentEvents: 0,        // events posted by this page: with the session, each event's id
  ticket: 0,            // the latest grid request: an answer to an earlier one (a slow start page) is dropped
};

function status(text, error = false) {
  $("status").textContent = text;
  $("status").title = text;
  $("status").classList.toggle("error", error);
}

// A 503 means the feedback store is locked (a long `toolkit feedback import`): send again after the
// server's Retry-After, then twice as long each time. Safe for a feedback post: its event id makes a repeat a no-op.
const RETRIES = 6, MAX_WAIT_S = 30;

async function request(path, options = {}, read = (response) => response.json()) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(path, options);
    if (response.status === 503 && attempt < RETRIES) {
      const first = Math.max(Number(response.headers.get("Retry-After")) || 1, 0.1);
      const wait = Math.min(MAX_WAIT_S, first * 2 ** attempt);
      status(`The feedback store is busy; sending again in ${wait} s (try ${attempt + 2} of ${RETRIES + 1})…`);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      throw new Error(detail || `${response.status} ${response.statusText}`);
    }
    return read(response);
  }
}

const api = (path, options) => request(path, options);
const postJson = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
const withClass = (path) => (state.classFilter ? `${path}${path.includes("?") ? "&" : "?"}class=${encodeURIComponent(state.classFilter)}` : path);

// The grid: tiles with file name, score and class, below the thumbnail and in the title.

function tile(result, { rank = true } = {}) {
  const figure = document.createElement("figure");
  figure.className = "thumb";
  figure.tabIndex = 0;
  figure.dataset.id = result.id;
  figure.setAttribute("role", "button");
  const score = result.score === null || result.score === undefined ? null : Number(result.score).toFixed(3);
  const kind = result.class || "no class";
  figure.title = [result.image, score === null ? null : `score ${score}`, `class ${kind}`].filter(Boolean).join("\n");
  const img = document.createElement("img");
  img.src = `/api/thumbnails/${result.id}`;
  img.alt = result.image;
  img.draggable = false;
  img.loading = "lazy";
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.textContent = result.image;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = score === null ? kind : `${score} · ${kind}`;
  caption.append(name, meta);
  figure.append(img, caption);
  if (rank && result.score !== null && result.score !== undefined) {
    const badge = document.createElement("span");
    badge.className = "rank";
    badge.textContent = result.rank;
    figure.append(badge);
  }
  return figure;
}

function remember(results) {
  for (const r of results) state.names.set(r.id, r.image);
}

function renderGrid(append = []) {
  if (append.length) $("grid").append(...append.map((r) => tile(r)));
  else $("grid").replaceChildren(...state.results.map((r) => tile(r)));
  $("grid-more").hidden = !(state.browse && state.results.length < state.browse.total);
  paintMarks();
}

function show(answer, what) {
  state.results = answer.results;
  state.browse = null;
  remember(answer.results);
  if (answer.query_class) $("query-class").value = answer.query_class;
  renderGrid();
  $("current-query").textContent = what + (state.classFilter ? ` (class ${state.classFilter})` : "");
  drawSoon();
  return `${what}: ${answer.results.length} images.`;
}

async function browse(offset = 0) {
  const ticket = offset === 0 ? ++state.ticket : state.ticket;
  const answer = await api(withClass(`/api/images?offset=${offset}&limit=${state.info.default_k}`));
  if (ticket !== state.ticket) return;
  remember(answer.results);
  if (offset === 0) {
    state.query = null;
    state.judged.clear();
    state.results = answer.results;
    state.browse = { total: answer.total };
    renderGrid();
    $("current-query").textContent = `Browsing ${state.classFilter ? `class ${state.classFilter}` : "all images"} (${answer.total.toLocaleString()}).`;
    drawSoon();
  } else {
    state.results = state.results.concat(answer.results);
    state.browse.total = answer.total;
    renderGrid(answer.results);
  }
}

$("grid-more").addEventListener("click", () => browse(state.results.length).catch((error) => status(error.message, true)));

// Marks: one judgement per image, painted on the grid, the review grid and the map.

const isKept = (mark) => mark === "lasso" || mark === "select";

function paintMarks() {
  document.querySelectorAll(".thumb").forEach((element) => {
    const mark = state.marks.get(Number(element.dataset.id));
    element.classList.toggle("selected", isKept(mark));
    element.classList.toggle("deselected", mark === "deselect");
    element.setAttribute("aria-pressed", isKept(mark) ? "true" : mark === "deselect" ? "mixed" : "false");
  });
  let selected = 0;
  state.marks.forEach((mark) => { if (mark !== "deselect") selected += 1; });
  $("counts").textContent = `Selected: ${selected} · Deselected: ${state.marks.size - selected}`;
  drawSoon();
}

// In the grid: none -> selected -> deselected -> none.
function toggleGrid(id) {
  const mark = state.marks.get(id);
  if (mark === undefined) state.marks.set(id, "select");
  else if (mark === "deselect") state.marks.delete(id);
  else state.marks.set(id, "deselect");
  paintMarks();
}

// In the review grid every image was selected: a click deselects it, a second click selects it again.
function toggleReview(id) {
  if (state.marks.get(id) !== "deselect") state.marks.set(id, "deselect");
  else state.marks.set(id, state.lassoed.has(id) ? "lasso" : "select");
  paintMarks();
}

function toggleIn(element) {
  const id = Number(element.dataset.id);
  if (element.closest("#review-grid")) toggleReview(id);
  else toggleGrid(id);
}

// The review grid: the map's lasso selection, REVIEW_PAGE thumbnails at a time.

const REVIEW_PAGE = 200;

function renderReview(more = false) {
  const from = more ? state.reviewShown : 0;
  state.reviewShown = Math.min(state.review.length, from + REVIEW_PAGE);
  const tiles = state.review.slice(from, state.reviewShown).map((id) => tile(
    { id, image: state.names.get(id) || `image ${id}`, class: groupName(id), score: null }, { rank: false }));
  if (more) $("review-grid").append(...tiles);
  else $("review-grid").replaceChildren(...tiles);
  $("review-count").textContent = state.review.length ? `${state.review.length.toLocaleString()} images` : "";
  $("review-hint").hidden = state.review.length > 0;
  $("review-more").hidden = state.reviewShown >= state.review.length;
  $("review-more").textContent = `Show more (${(state.review.length - state.reviewShown).toLocaleString()} left)`;
  paintMarks();
}

$("review-more").addEventListener("click", () => renderReview(true));

// Searching.

async function search(q) {
  status("Searching…");
  const ticket = ++state.ticket;
  const answer = await api(withClass(`/api/search?q=${encodeURIComponent(q)}&k=${state.info.default_k}`));
  if (ticket !== state.ticket) return;
  state.query = { text: q };
  state.judged.clear();
  status(show(answer, `Results for '${q}'`));
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = $("q").value.trim();
  if (q) search(q).catch((error) => status(error.message, true));
});

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  $("upload").value = "";
  if (file.size > state.info.max_upload_bytes) {
    status(`${file.name} is over the upload limit of ${state.info.max_upload_bytes.toLocaleString()} bytes.`, true);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  try {
    status("Embedding the image…");
    const answer = await api(withClass(`/api/search/image?k=${state.info.default_k}`), { method: "POST", body: form });
    state.query = { vector: answer.query_vector };
    state.judged.clear();
    status(show(answer, `Images like ${file.name}`));
  } catch (error) { status(error.message, true); }
});

// The model's suggestions (toolkit serve --suggest): the images it is least sure of, judged like any others.
// Each is shown for the class the model asks about, the one "Judged for" is set to (first in rank order).

async function reviewSuggested() {
  status("Loading the model's suggestions…");
  const ticket = ++state.ticket;
  const answer = await api("/api/suggestions");
  if (ticket !== state.ticket) return;
  state.query = null;
  state.judged.clear();
  const first = answer.results.find((r) => r.query_class);
  if (first) answer.query_class = first.query_class;
  for (const r of answer.results) r.class = `asks: ${r.query_class} (p ${Number(r.probability).toFixed(2)})`;
  status(show(answer, "Uncertain images the model asks about") + " Deselect the ones that are not the class it asks, then Submit.");
}

$("suggested").addEventListener("click", () => reviewSuggested().catch((error) => status(error.message, true)));

// The class filter and the colouring.

function setFilter(label) {
  state.classFilter = label;
  document.querySelectorAll("#classes .class").forEach((button) => {
    button.setAttribute("aria-pressed", String((button.dataset.label || null) === label));
  });
  if (label && !$("query-class").value) $("query-class").value = label;
  drawSoon();
  const again = state.query && state.query.text ? search(state.query.text) : browse();
  again.catch((error) => status(error.message, true));
}

$("class-all").addEventListener("click", () => setFilter(null));

$("colour-class").addEventListener("click", () => colourBy("class"));
$("colour-feedback").addEventListener("click", () => colourBy("feedback"));
$("query-class").addEventListener("change", () => {
  refreshCounts();
  if (map.colourBy === "feedback") colourBy("feedback");
});

async function refreshCounts() {
  const queryClass = $("query-class").value;
  try {
    const counts = await api(`/api/feedback/counts${queryClass ? `?query_class=${encodeURIComponent(queryClass)}` : ""}`);
    showCounts(counts, queryClass);
  } catch (error) { status(error.message, true); }
}

function showCounts(counts, queryClass) {
  const rows = [["Events", counts.events], ["Images judged", counts.images]];
  if (queryClass) rows.push([`Confirmed ${queryClass}`, counts.confirmed], [`Rejected ${queryClass}`, counts.rejected]);
  $("feedback-counts").replaceChildren(...rows.flatMap(([name, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = Number(value).toLocaleString();
    return [dt, dd];
  }));
}

// Submitting: only the judgements that changed since the last Submit, then the refined ranking.

async function submit() {
  const queryClass = $("query-class").value;
  if (!queryClass) { status("Choose the class these images are judged for (Judged for, in the sidebar).", true); return; }
  // As the user acted: the lasso took these in (deselected or not), these were clicked in, these taken out.
  const byAction = { lasso: [], select: [], deselect: [] };
  const told = new Map();
  state.marks.forEach((mark, id) => {
    const key = `${queryClass}\t${id}`, before = state.sent.get(key);
    if (mark === "deselect") {
      if (state.lassoed.has(id) && before === undefined) { byAction.lasso.push(id); told.set(key, "lasso"); }
      if (before !== "deselect") { byAction.deselect.push(id); told.set(key, "deselect"); }
    } else if (before === undefined && state.lassoed.has(id)) {
      byAction.lasso.push(id); told.set(key, "keep");
    } else if (before !== "keep") {
      byAction.select.push(id); told.set(key, "keep");
    }
  });
  const events = Object.values(byAction).reduce((n, ids) => n + (ids.length > 0), 0);
  if (!events && !state.query) { status("Nothing changed since the last Submit: nothing sent."); return; }
  try {
    let stored = 0;
    for (const action of ["lasso", "select", "deselect"]) {
      if (!byAction[action].length) continue;
      const answer = await postJson("/api/feedback", {
        id: `${state.session}-${(state.sentEvents += 1)}`,
        user: $("user").value.trim() || "web", session: state.session, timestamp: new Date().toISOString(),
        query_class: queryClass, action, images: byAction[action].map((id) => state.names.get(id)),
      });
      if (answer.added) stored += 1;
    }
    told.forEach((value, key) => state.sent.set(key, value === "lasso" ? "keep" : value));
    const done = `Stored ${stored} event${stored === 1 ? "" : "s"}.`;
    refreshCounts();
    if (map.colourBy === "feedback") colourBy("feedback");
    if (!state.query) { status(done); return; }
    // Each round refines the original query with every judgement so far; a later one overrides an earlier.
    state.marks.forEach((mark, id) => state.judged.set(id, mark !== "deselect"));
    const judged = [...state.judged];
    const selected = judged.filter(([, kept]) => kept).map(([id]) => id);
    const deselected = judged.filter(([, kept]) => !kept).map(([id]) => id);
    const body = { query: state.query, selected, deselected, k: state.info.default_k };
    if (state.classFilter) body.class = state.classFilter;
    const answer = await postJson("/api/search/refine", body);
    status(`${done} ${show(answer, `Refined with ${selected.length} selected and ${deselected.length} deselected`)}`);
  } catch (error) { status(error.message, true); }
}
$("submit").addEventListener("click", submit);
$("clear").addEventListener("click", () => {
  state.marks.clear();
  state.lassoed.clear();
  state.review = [];
  renderReview();
  status("Cleared the marks.");
});

// Clicks and keys on tiles: the same in the grid and the review grid.

let justLassoed = false;
document.addEventListener("click", (event) => {
  const element = event.target.closest(".thumb");
  if (!element || justLassoed) { justLassoed = false; return; }
  toggleIn(element);
});

// The nearest tile of the same grid in an arrow's direction, by screen position.
function neighbour(from, key) {
  const a = from.getBoundingClientRect();
  const [dx, dy] = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[key];
  let best = null, bestCost = Infinity;
  for (const element of from.parentElement.children) {
    if (element === from) continue;
    const b = element.getBoundingClientRect();
    const x = b.left + b.width / 2 - (a.left + a.width / 2), y = b.top + b.height / 2 - (a.top + a.height / 2);
    const along = x * dx + y * dy, across = Math.abs(x * dy - y * dx);
    if (along <= 1) continue;
    const cost = along + 3 * across;
    if (cost < bestCost) { best = element; bestCost = cost; }
  }
  return best;
}

document.addEventListener("keydown", (event) => {
  const element = document.activeElement && document.activeElement.closest && document.activeElement.closest(".thumb");
  if (!element) return;
  if (event.key === " " || event.key === "Enter") {
    event.preventDefault();
    toggleIn(element);
  } else if (event.key.startsWith("Arrow")) {
    event.preventDefault();
    const next = neighbour(element, event.key);
    if (next) { next.focus(); next.scrollIntoView({ block: "nearest" }); }
  }
});

// Lassos: press and drag a free-form path (client coordinates), drawn on the page-wide SVG.

function lassoPath(points) {
  $("lasso-path").setAttribute("points", points.map((p) => p.join(",")).join(" "));
}

// Less than this many pixels of travel is a click, not a lasso.
const CLICK_TRAVEL = 12;

function isClick(points) {
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  return points.length < 3 || Math.max(...xs) - Math.min(...xs) + Math.max(...ys) - Math.min(...ys) < CLICK_TRAVEL;
}

// The grid's lasso starts anywhere in the grid's view (beside or below the tiles too) and selects the tiles whose
// centre is inside it.

const surface = $("grid-view");
let gridLasso = null;

function inside(x, y, points) {
  let hit = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i], [xj, yj] = points[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

surface.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || event.target.closest("button")) return;
  gridLasso = [[event.clientX, event.clientY]];
  surface.setPointerCapture(event.pointerId);
  event.preventDefault();
});
surface.addEventListener("pointermove", (event) => {
  if (!gridLasso) return;
  gridLasso.push([event.clientX, event.clientY]);
  lassoPath(gridLasso);
});
surface.addEventListener("pointerup", (event) => {
  if (!gridLasso) return;
  const points = gridLasso;
  gridLasso = null;
  lassoPath([]);
  justLassoed = true;  // Pointer capture sends the click to the surface: handled here, not by the click listener.
  if (isClick(points)) {
    const element = document.elementsFromPoint(event.clientX, event.clientY).map((e) => e.closest(".thumb")).find(Boolean);
    if (element) toggleIn(element);
    return;
  }
  let added = 0;
  for (const element of $("grid").children) {
    const r = element.getBoundingClientRect();
    if (inside(r.left + r.width / 2, r.top + r.height / 2, points)) {
      state.marks.set(Number(element.dataset.id), "lasso");
      state.lassoed.add(Number(element.dataset.id));
      added += 1;
    }
  }
  paintMarks();
  status(`Lasso: ${added} images selected.`);
});
surface.addEventListener("pointercancel", () => { gridLasso = null; lassoPath([]); });

// The map: every image a point of GET /api/map, drawn as pixels into one ImageData (fast enough for a million points);
// results, marks and (zoomed in) thumbnails drawn over it with the 2-D context.
//
// Reset's fit rule, kept exactly (tests compute screen positions from it): take the bounding box
// [x0, x1] x [y0, y1] of every point whose x and y are finite; scale = min((W - 2 MAP_MARGIN) / (x1 - x0),
// (H - 2 MAP_MARGIN) / (y1 - y0)), W x H the canvas's size in CSS pixels (an extent of 0 is left out of the min;
// both 0: scale 1); a point (x, y) is drawn at screen x = W / 2 + (x - (x0 + x1) / 2) scale,
// screen y = H / 2 - (y - (y0 + y1) / 2) scale (y up), in CSS pixels from the canvas's top-left corner.

const MAP_MARGIN = 24;
const MAX_THUMBS = 300;      // zoomed in, thumbnails are drawn when at most this many points are on screen
const THUMB_PX = 44;         // their size, CSS pixels
const THUMB_CACHE = 1500;    // Image objects kept
const RANKED = 10;           // results whose rank is written on the map
const MIN_ZOOM = 0.25, MAX_ZOOM = 20000;  // relative to the fit
// 20 colours told apart on white (after Trubetskoy's list), then grey for "other" and unknown.
const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
  "#9a6324", "#800000", "#808000", "#000075", "#fabed4", "#dcbeff", "#ffe119", "#aaffc3", "#ffd8b1", "#000000", "#7b68ee"];
const GREY = "#a9a9a9", FADED = "#e2e2e2", BACKGROUND = "#ffffff";
const STATE_COLOURS = [GREY, "#2f855a", "#c53030"];  // not judged, confirmed, rejected
const UNKNOWN_GROUP = 65535;

const map = {
  n: 0, xs: null, ys: null, groups: null, states: null, colourBy: "class",
  box: null,             // [x0, x1, y0, y1] of the finite points
  cx: 0, cy: 0, scale: 1, fit: 1,
  image: null, pixels: null, dpr: 1,
  thumbs: new Map(),     // id -> Image, least recently used first
  pending: false, mode: "lasso", drag: null,
};
const canvas = $("map");
const context = canvas.getContext("2d");

function rgba(hex) {
  const v = parseInt(hex.slice(1), 16);
  return (0xff000000 | ((v & 0xff) << 16) | (v & 0xff00) | (v >> 16)) >>> 0;  // ImageData's bytes: R, G, B, A
}

function groupColour(code) {
  const group = state.info.groups[code];
  if (!group || group.name === "" || group.name === "other") return GREY;
  return PALETTE[code % PALETTE.length];
}

function groupName(id) {
  const group = map.groups && state.info.groups[map.groups[id]];
  return group ? group.name : "";
}

// Whether a group's images carry the filter's label: its class text is the label, or lists it (multilabel, ';').
const carries = (name, label) => name.split(";").includes(label);

// The colour of each group code (65,536 entries: one look-up per point); in feedback mode, of each state.
function colourTable() {
  if (map.colourBy === "feedback") return Uint32Array.from(STATE_COLOURS, rgba);
  const table = new Uint32Array(UNKNOWN_GROUP + 1).fill(rgba(state.classFilter ? FADED : GREY));
  state.info.groups.forEach((group, code) => {
    if (!state.classFilter || carries(group.name, state.classFilter)) table[code] = rgba(groupColour(code));
  });
  return table;
}

function fitMap() {
  if (!map.box) return;
  const [x0, x1, y0, y1] = map.box, w = canvas.clientWidth, h = canvas.clientHeight;
  const scales = [];
  if (x1 > x0) scales.push((w - 2 * MAP_MARGIN) / (x1 - x0));
  if (y1 > y0) scales.push((h - 2 * MAP_MARGIN) / (y1 - y0));
  map.scale = map.fit = scales.length ? Math.min(...scales) : 1;
  map.cx = (x0 + x1) / 2;
  map.cy = (y0 + y1) / 2;
  drawSoon();
}

const toScreen = (x, y) => [canvas.clientWidth / 2 + (x - map.cx) * map.scale, canvas.clientHeight / 2 - (y - map.cy) * map.scale];
const toMap = (sx, sy) => [map.cx + (sx - canvas.clientWidth / 2) / map.scale, map.cy - (sy - canvas.clientHeight / 2) / map.scale];

function drawSoon() {
  if (map.pending || !map.n) return;
  map.pending = true;
  requestAnimationFrame(() => { map.pending = false; draw(); });
}

// The backing store follows the canvas's CSS size and the screen's pixel ratio.
function sizeCanvas() {
  const dpr = window.devicePixelRatio || 1, w = Math.round(canvas.clientWidth * dpr), h = Math.round(canvas.clientHeight * dpr);
  if (canvas.width !== w || canvas.height !== h || !map.image) {
    canvas.width = w;
    canvas.height = h;
    map.image = context.createImageData(Math.max(w, 1), Math.max(h, 1));
    map.pixels = new Uint32Array(map.image.data.buffer);
  }
  map.dpr = dpr;
}

// A point's radius in device pixels: small for a crowd, larger as the view zooms in.
function pointRadius() {
  const base = map.n > 200_000 ? 0.8 : map.n > 20_000 ? 1.4 : map.n > 2_000 ? 2.2 : 3.5;
  return Math.min(7, base * Math.max(1, Math.sqrt(map.scale / map.fit))) * map.dpr;
}

// The pixel offsets of a disc of radius r (at least the 2 x 2 square).
function disc(r) {
  const offsets = [], reach = Math.max(1, Math.ceil(r));
  for (let dy = -reach; dy <= reach; dy++) {
    for (let dx = -reach; dx <= reach; dx++) if (dx * dx + dy * dy <= r * r || (dx >= 0 && dy >= 0 && dx <= 1 && dy <= 1)) offsets.push([dx, dy]);
  }
  return offsets;
}

function draw() {
  sizeCanvas();
  const { xs, ys, n, pixels, dpr } = map, w = canvas.width, h = canvas.height;
  const k = map.scale * dpr, ox = dpr * canvas.clientWidth / 2 - map.cx * k, oy = dpr * canvas.clientHeight / 2 + map.cy * k;
  const codes = map.colourBy === "feedback" ? map.states : map.groups, table = colourTable();
  const r = pointRadius(), offsets = disc(r), reach = Math.ceil(r) + 1;
  const flat = offsets.map(([dx, dy]) => dy * w + dx);
  pixels.fill(rgba(BACKGROUND));
  const visible = [];
  for (let i = 0; i < n; i++) {
    const x = xs[i];
    if (x !== x) continue;  // NaN: no point
    const px = Math.floor(ox + x * k), py = Math.floor(oy - ys[i] * k);
    if (px < -reach || py < -reach || px >= w + reach || py >= h + reach) continue;
    if (visible.length <= MAX_THUMBS) visible.push(i);
    const colour = table[codes[i]], at = py * w + px;
    if (px >= reach && py >= reach && px < w - reach && py < h - reach) {
      for (let j = 0; j < flat.length; j++) pixels[at + flat[j]] = colour;
    } else {
      for (const [dx, dy] of offsets) {
        const qx = px + dx, qy = py + dy;
        if (qx >= 0 && qy >= 0 && qx < w && qy < h) pixels[qy * w + qx] = colour;
      }
    }
  }
  context.putImageData(map.image, 0, 0);
  context.save();
  context.scale(dpr, dpr);
  const thumbs = visible.length <= MAX_THUMBS && map.scale > map.fit;
  if (thumbs) visible.forEach(drawThumb);
  drawMarks(thumbs, r / dpr);
  drawResults(thumbs, r / dpr);
  context.restore();
  const shown = visible.length > MAX_THUMBS ? `over ${MAX_THUMBS}` : String(visible.length);
  $("map-caption").textContent = `${map.points.toLocaleString()} points · ${shown} on screen` +
    (thumbs ? "" : ` · zoom in to ${MAX_THUMBS} or fewer on screen for thumbnails`);
}

function thumbImage(id) {
  let image = map.thumbs.get(id);
  if (image) { map.thumbs.delete(id); map.thumbs.set(id, image); return image; }
  image = new Image();
  image.onload = drawSoon;
  image.src = `/api/thumbnails/${id}`;
  map.thumbs.set(id, image);
  if (map.thumbs.size > THUMB_CACHE) map.thumbs.delete(map.thumbs.keys().next().value);
  return image;
}

function drawThumb(id) {
  const image = thumbImage(id);
  if (!image.complete || !image.naturalWidth) return;
  const [sx, sy] = toScreen(map.xs[id], map.ys[id]), s = THUMB_PX;
  const fit = Math.min(s / image.naturalWidth, s / image.naturalHeight), tw = image.naturalWidth * fit, th = image.naturalHeight * fit;
  context.drawImage(image, sx - tw / 2, sy - th / 2, tw, th);
  context.strokeStyle = groupColour(map.groups[id] === UNKNOWN_GROUP ? -1 : map.groups[id]);
  context.lineWidth = 2;
  context.strokeRect(sx - tw / 2, sy - th / 2, tw, th);
}

function drawMarks(thumbs, radius) {
  const half = THUMB_PX / 2 + 3;
  state.marks.forEach((mark, id) => {
    if (id >= map.n || map.xs[id] !== map.xs[id]) return;
    const [sx, sy] = toScreen(map.xs[id], map.ys[id]);
    context.strokeStyle = mark === "deselect" ? "#c53030" : "#2f855a";
    context.lineWidth = 2;
    context.beginPath();
    if (thumbs) context.rect(sx - half, sy - half, 2 * half, 2 * half);
    else context.arc(sx, sy, radius + 2.5, 0, 2 * Math.PI);
    context.stroke();
  });
}

function drawResults(thumbs, radius) {
  if (state.browse) return;
  context.font = "bold 11px system-ui, sans-serif";
  context.textBaseline = "middle";
  state.results.forEach((result, index) => {
    const id = result.id;
    if (id >= map.n || map.xs[id] !== map.xs[id]) return;
    const [sx, sy] = toScreen(map.xs[id], map.ys[id]);
    context.strokeStyle = "#1a202c";
    context.lineWidth = 1.5;
    context.beginPath();
    context.arc(sx, sy, thumbs ? THUMB_PX / 2 + 7 : radius + 5, 0, 2 * Math.PI);
    context.stroke();
    if (index < RANKED) {
      const label = String(result.rank), tx = sx + (thumbs ? THUMB_PX / 2 : radius + 6), ty = sy - (thumbs ? THUMB_PX / 2 : radius + 6);
      const width = context.measureText(label).width + 6;
      context.fillStyle = "#1a202c";
      context.fillRect(tx, ty - 7, width, 14);
      context.fillStyle = "#fff";
      context.fillText(label, tx + 3, ty);
    }
  });
}

// Zoom (wheel at the pointer, +/- at the centre) and pan (drag in Pan mode, shift-drag or the middle button).

function zoomAt(factor, sx, sy) {
  const scale = Math.min(map.fit * MAX_ZOOM, Math.max(map.fit * MIN_ZOOM, map.scale * factor));
  const [mx, my] = toMap(sx, sy);
  map.scale = scale;
  map.cx = mx - (sx - canvas.clientWidth / 2) / scale;
  map.cy = my + (sy - canvas.clientHeight / 2) / scale;
  drawSoon();
}

canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const box = canvas.getBoundingClientRect();
  zoomAt(Math.exp(-event.deltaY * 0.002), event.clientX - box.left, event.clientY - box.top);
}, { passive: false });
$("zoom-in").addEventListener("click", () => zoomAt(1.5, canvas.clientWidth / 2, canvas.clientHeight / 2));
$("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, canvas.clientWidth / 2, canvas.clientHeight / 2));
$("zoom-reset").addEventListener("click", fitMap);

function setMode(mode) {
  map.mode = mode;
  $("mode-lasso").setAttribute("aria-pressed", String(mode === "lasso"));
  $("mode-pan").setAttribute("aria-pressed", String(mode === "pan"));
  canvas.classList.toggle("pan", mode === "pan");
}
$("mode-lasso").addEventListener("click", () => setMode("lasso"));
$("mode-pan").addEventListener("click", () => setMode("pan"));

canvas.addEventListener("pointerdown", (event) => {
  if (!map.n) return;
  const pan = event.button === 1 || (event.button === 0 && (event.shiftKey || map.mode === "pan"));
  if (!pan && event.button !== 0) return;
  map.drag = pan ? { pan: true, x: event.clientX, y: event.clientY } : { pan: false, points: [[event.clientX, event.clientY]] };
  canvas.setPointerCapture(event.pointerId);
  event.preventDefault();
});
canvas.addEventListener("pointermove", (event) => {
  const drag = map.drag;
  if (!drag) return;
  if (drag.pan) {
    map.cx -= (event.clientX - drag.x) / map.scale;
    map.cy += (event.clientY - drag.y) / map.scale;
    drag.x = event.clientX;
    drag.y = event.clientY;
    drawSoon();
  } else {
    drag.points.push([event.clientX, event.clientY]);
    lassoPath(drag.points);
  }
});
canvas.addEventListener("pointerup", () => {
  const drag = map.drag;
  map.drag = null;
  if (!drag || drag.pan) return;
  lassoPath([]);
  if (!isClick(drag.points)) selectOnMap(drag.points).catch((error) => status(error.message, true));
});
canvas.addEventListener("pointercancel", () => { map.drag = null; lassoPath([]); });

// A lasso on the map asks the server for every point inside (in the map's own coordinates): the review selection.
async function selectOnMap(points) {
  const box = canvas.getBoundingClientRect();
  const body = { polygon: points.map(([x, y]) => toMap(x - box.left, y - box.top)) };
  if (state.classFilter) body.class = state.classFilter;
  status("Selecting…");
  const answer = await postJson("/api/map/select", body);
  const known = new Set(state.review);
  answer.ids.forEach((id, i) => {
    state.names.set(id, answer.images[i]);
    if (state.marks.get(id) === undefined) { state.marks.set(id, "lasso"); state.lassoed.add(id); }
    if (!known.has(id)) state.review.push(id);
  });
  renderReview();
  const more = answer.truncated ? ` (of ${answer.count.toLocaleString()} inside; a lasso takes at most ${answer.ids.length.toLocaleString()})` : "";
  status(`Lasso on the map: ${answer.ids.length.toLocaleString()} images selected${more}; review them on the right.`);
}

async function colourBy(kind) {
  if (kind === "feedback") {
    const queryClass = $("query-class").value;
    if (!queryClass) { status("Choose the class (Judged for) whose feedback colours the map.", true); return; }
    try {
      map.states = new Uint8Array(await request(`/api/map/states?query_class=${encodeURIComponent(queryClass)}`, {}, (r) => r.arrayBuffer()));
    } catch (error) { status(error.message, true); return; }
  }
  map.colourBy = kind;
  $("colour-class").setAttribute("aria-pressed", String(kind === "class"));
  $("colour-feedback").setAttribute("aria-pressed", String(kind === "feedback"));
  $("legend").hidden = kind === "feedback";
  drawSoon();
}

// GET /api/map: little-endian float32 x[N], float32 y[N], uint16 group[N] (typed arrays read the machine's byte
// order: little-endian on every browser's platform).
async function loadMap() {
  if (state.info.map.source === null) { mapMessage(state.info.map.message); return; }
  let buffer;
  try {
    buffer = await request("/api/map", {}, (r) => r.arrayBuffer());
  } catch (error) { mapMessage(error.message); return; }
  const n = buffer.byteLength / 10;
  map.xs = new Float32Array(buffer, 0, n);
  map.ys = new Float32Array(buffer, 4 * n, n);
  map.groups = new Uint16Array(buffer, 8 * n, n);
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity], points = 0;
  for (let i = 0; i < n; i++) {
    const x = map.xs[i], y = map.ys[i];
    if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
    points += 1;
    if (x < x0) x0 = x;
    if (x > x1) x1 = x;
    if (y < y0) y0 = y;
    if (y > y1) y1 = y;
  }
  map.n = n;
  map.points = points;
  map.box = points ? [x0, x1, y0, y1] : null;
  if (!points) { mapMessage("No image has coordinates on this map."); return; }
  fitMap();
  new ResizeObserver(() => { sizeCanvas(); drawSoon(); }).observe(canvas);
}

function mapMessage(text) {
  $("map-message").textContent = text;
  $("map-message").hidden = false;
  canvas.hidden = true;
}

// The sidebar: the classes (filter buttons; with the map's colour when a map group is that class) and the map's
// other groups (multilabel combinations, no class, other).

function sidebar() {
  const { groups, class_counts: counts } = state.info;
  // Multiclass: each class is one group, so its button carries the group's colour and the legend lists only the
  // rest (no class, other). Multilabel: a class spans several groups, so the legend lists every group.
  const merged = !groups.some((group) => group.name.includes(";"));
  const codes = new Map(merged ? groups.map((group, code) => [group.name, code]) : []);
  const button = (label) => {
    const element = document.createElement("button");
    element.type = "button";
    element.className = "class";
    element.dataset.label = label;
    element.setAttribute("aria-pressed", "false");
    const swatch = document.createElement("span"), name = document.createElement("span"), count = document.createElement("span");
    swatch.className = "swatch";
    if (codes.has(label)) swatch.style.background = groupColour(codes.get(label));
    name.className = "name";
    name.textContent = label;
    count.className = "count";
    count.textContent = (counts[label] || 0).toLocaleString();
    element.append(...(codes.has(label) ? [swatch] : []), name, count);
    element.addEventListener("click", () => setFilter(state.classFilter === label ? null : label));
    return element;
  };
  $("classes").append(...state.info.classes.map(button));
  const labels = new Set(merged ? state.info.classes : []);
  $("legend").replaceChildren(...groups.map((group, code) => [group, code]).filter(([group]) => !labels.has(group.name)).map(([group, code]) => {
    const item = document.createElement("li"), swatch = document.createElement("span"), name = document.createElement("span"), count = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = groupColour(code);
    name.className = "name";
    name.textContent = group.name === "" ? "no class" : group.name.split(";").join(" + ");
    name.title = name.textContent;
    count.className = "count";
    count.textContent = group.count.toLocaleString();
    item.dataset.group = group.name;
    item.append(swatch, name, count);
    return item;
  }));
}

// Start: the collection's first page, its map, the classes and the feedback so far.

(async () => {
  try {
    state.info = await api("/api/info");
    const { info } = state;
    if (info.examples.length) $("q").placeholder = `Keyword, e.g. ${info.examples.join(", ")}`;
    $("query-class").replaceChildren(new Option("(choose)", ""), ...info.classes.map((name) => new Option(name, name)));
    showCounts({ ...info.feedback, confirmed: 0, rejected: 0 }, "");
    $("suggested").hidden = !info.suggestions;
    sidebar();
    renderReview();
    await Promise.all([browse(), loadMap()]);
  } catch (error) { status(error.message, true); }
})();
