// The page of `toolkit serve`: search, show a grid or a map, lasso / click / keys to judge, submit, refine.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  query: null,          // {text} | {vector} | {id}: what `refine` starts from
  results: [],          // [{rank, id, image, score}]
  marks: new Map(),     // id -> "lasso" | "select" | "deselect", on the results shown
  lassoed: new Set(),   // ids a lasso took in, kept when then deselected: the lasso event records what was lassoed
  judged: new Map(),    // id -> true (selected) | false (deselected): every round since the query, for `refine`
  view: "grid",
  coords: null,         // id -> [x, y] in the 1000 x 1000 map layer
  zoom: 1, panX: 0, panY: 0,
  session: "s-" + Math.random().toString(36).slice(2, 10),
  sent: 0,              // events posted by this page: with the session, each event's id
};

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

// A 503 means the feedback store is locked (a long `toolkit feedback import`): send again after the
// server's Retry-After, then twice as long each time. Safe for a feedback post: its event id makes a repeat a no-op.
const RETRIES = 6, MAX_WAIT_S = 30;

async function api(path, options = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const response = await fetch(path, options);
    if (response.status === 503 && attempt < RETRIES) {
      const first = Math.max(Number(response.headers.get("Retry-After")) || 1, 0.1);
      const wait = Math.min(MAX_WAIT_S, first * 2 ** attempt);
      status(`The feedback store is busy; sending again in ${wait} s (try ${attempt + 2} of ${RETRIES + 1})…`);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
      continue;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
      throw new Error(detail || `${response.status} ${response.statusText}`);
    }
    return body;
  }
}

// Results.

function show(answer, what) {
  state.results = answer.results;
  state.marks.clear();
  state.lassoed.clear();
  if (answer.query_class) $("query-class").value = answer.query_class;
  render();
  status(`${what}: ${answer.results.length} images.`);
}

function thumb(result) {
  const figure = document.createElement("figure");
  figure.className = "thumb";
  figure.tabIndex = 0;
  figure.dataset.id = result.id;
  figure.setAttribute("role", "button");
  figure.title = `${result.image} (score ${result.score})`;
  const img = document.createElement("img");
  img.src = `/api/thumbnails/${result.id}`;
  img.alt = result.image;
  img.draggable = false;
  const rank = document.createElement("span");
  rank.className = "rank";
  rank.textContent = result.rank;
  figure.append(img, rank);
  return figure;
}

function render() {
  const grid = $("grid"), layer = $("map-layer");
  grid.replaceChildren(...state.results.map(thumb));
  if (state.coords) {
    layer.replaceChildren(...state.results.filter((r) => state.coords.has(r.id)).map((r) => {
      const element = thumb(r);
      const [x, y] = state.coords.get(r.id);
      element.style.left = `${x}px`;
      element.style.top = `${y}px`;
      return element;
    }));
  }
  paintMarks();
}

function paintMarks() {
  document.querySelectorAll(".thumb").forEach((element) => {
    const mark = state.marks.get(Number(element.dataset.id));
    element.classList.toggle("selected", mark === "lasso" || mark === "select");
    element.classList.toggle("deselected", mark === "deselect");
    element.setAttribute("aria-pressed", mark === "lasso" || mark === "select" ? "true" : mark === "deselect" ? "mixed" : "false");
  });
  const marks = [...state.marks.values()];
  const selected = marks.filter((m) => m !== "deselect").length;
  $("counts").textContent = `Selected: ${selected} · Deselected: ${marks.length - selected}`;
}

// Toggle one image: none -> selected -> deselected -> none.
function toggle(id) {
  const mark = state.marks.get(id);
  if (mark === undefined) state.marks.set(id, "select");
  else if (mark === "deselect") state.marks.delete(id);
  else state.marks.set(id, "deselect");
  paintMarks();
}

// Searching.

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  try {
    status("Searching…");
    const answer = await api(`/api/search?q=${encodeURIComponent(q)}&k=${state.info.default_k}`);
    state.query = { text: q };
    state.judged.clear();
    show(answer, `Results for '${q}'`);
  } catch (error) { status(error.message, true); }
});

$("upload").addEventListener("change", async () => {
  const file = $("upload").files[0];
  if (!file) return;
  if (file.size > state.info.max_upload_bytes) {
    status(`${file.name} is over the upload limit of ${state.info.max_upload_bytes} bytes.`, true);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  try {
    status("Embedding the image…");
    const answer = await api(`/api/search/image?k=${state.info.default_k}`, { method: "POST", body: form });
    state.query = { vector: answer.query_vector };
    state.judged.clear();
    show(answer, `Images like ${file.name}`);
  } catch (error) { status(error.message, true); }
  $("upload").value = "";
});

// Submitting the judgements, then the refined ranking.

async function submit() {
  if (!state.query) { status("Search first.", true); return; }
  const queryClass = $("query-class").value;
  if (!queryClass) { status("Choose the class these images are judged for.", true); return; }
  // As the user acted: the lasso took these in (deselected or not), these were clicked in, these taken out.
  const byAction = { lasso: [...state.lassoed].filter((id) => state.marks.has(id)), select: [], deselect: [] };
  state.marks.forEach((mark, id) => {
    if (mark === "deselect") byAction.deselect.push(id);
    else if (!state.lassoed.has(id)) byAction.select.push(id);
  });
  const names = new Map(state.results.map((r) => [r.id, r.image]));
  try {
    for (const action of ["lasso", "select", "deselect"]) {
      if (!byAction[action].length) continue;
      await api("/api/feedback", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          id: `${state.session}-${(state.sent += 1)}`,
          user: $("user").value.trim() || "web", session: state.session, timestamp: new Date().toISOString(),
          query_class: queryClass, action, images: byAction[action].map((id) => names.get(id)),
        }),
      });
    }
    // Each round refines the original query with every judgement so far; a later one overrides an earlier.
    state.marks.forEach((mark, id) => state.judged.set(id, mark !== "deselect"));
    const judged = [...state.judged];
    const selected = judged.filter(([, kept]) => kept).map(([id]) => id);
    const deselected = judged.filter(([, kept]) => !kept).map(([id]) => id);
    const answer = await api("/api/search/refine", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: state.query, selected, deselected, k: state.info.default_k }),
    });
    show(answer, `Refined with ${selected.length} selected and ${deselected.length} deselected`);
  } catch (error) { status(error.message, true); }
}
$("submit").addEventListener("click", submit);
$("clear").addEventListener("click", () => { state.marks.clear(); state.lassoed.clear(); paintMarks(); });

// Clicks and keys on thumbnails.

let justLassoed = false;
document.addEventListener("click", (event) => {
  const element = event.target.closest(".thumb");
  if (!element || justLassoed) { justLassoed = false; return; }
  toggle(Number(element.dataset.id));
});

function visibleThumbs() {
  return [...document.querySelectorAll(state.view === "grid" ? "#grid .thumb" : "#map-layer .thumb")];
}

// The nearest thumbnail in an arrow's direction, by screen position: the same for the grid and the map.
function neighbour(from, key) {
  const a = from.getBoundingClientRect();
  const [dx, dy] = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[key];
  let best = null, bestCost = Infinity;
  for (const element of visibleThumbs()) {
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
    toggle(Number(element.dataset.id));
  } else if (event.key.startsWith("Arrow")) {
    event.preventDefault();
    const next = neighbour(element, event.key);
    if (next) next.focus();
  }
});

// The lasso: press and drag a free-form path; thumbnails whose centre lies inside it are selected.

function inside(x, y, points) {
  let hit = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i], [xj, yj] = points[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
  }
  return hit;
}

let lasso = null;  // [[x, y], ...] in client coordinates while drawing
let panning = null;

function startDrag(event) {
  if (event.button === 1 || (event.button === 0 && event.shiftKey && state.view === "map")) {
    panning = { x: event.clientX - state.panX, y: event.clientY - state.panY };
  } else if (event.button === 0) {
    lasso = [[event.clientX, event.clientY]];
  } else return;
  event.currentTarget.setPointerCapture(event.pointerId);
  event.preventDefault();
}

function moveDrag(event) {
  if (panning) {
    state.panX = event.clientX - panning.x;
    state.panY = event.clientY - panning.y;
    applyTransform();
  } else if (lasso) {
    lasso.push([event.clientX, event.clientY]);
    $("lasso-path").setAttribute("points", lasso.map((p) => p.join(",")).join(" "));
  }
}

function endDrag(event) {
  if (panning) { panning = null; return; }
  if (!lasso) return;
  const points = lasso;
  lasso = null;
  $("lasso-path").setAttribute("points", "");
  const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
  if (points.length < 3 || Math.max(...xs) - Math.min(...xs) + Math.max(...ys) - Math.min(...ys) < 12) {
    // A click, not a drag: toggle the thumbnail under the pointer (pointer capture hides it from `click`).
    const element = document.elementsFromPoint(event.clientX, event.clientY).map((e) => e.closest(".thumb")).find(Boolean);
    if (element) { toggle(Number(element.dataset.id)); justLassoed = true; }
    return;
  }
  let added = 0;
  for (const element of visibleThumbs()) {
    const r = element.getBoundingClientRect();
    if (inside(r.left + r.width / 2, r.top + r.height / 2, points)) {
      state.marks.set(Number(element.dataset.id), "lasso");
      state.lassoed.add(Number(element.dataset.id));
      added += 1;
    }
  }
  justLassoed = true;
  paintMarks();
  status(`Lasso: ${added} images selected.`);
}

for (const surface of [$("grid"), $("map")]) {
  surface.addEventListener("pointerdown", startDrag);
  surface.addEventListener("pointermove", moveDrag);
  surface.addEventListener("pointerup", endDrag);
  surface.addEventListener("pointercancel", () => { lasso = panning = null; $("lasso-path").setAttribute("points", ""); });
}

// The map: zoom (wheel, buttons) and pan (shift-drag or middle button).

function applyTransform() {
  $("map-layer").style.transform = `translate(${state.panX}px, ${state.panY}px) scale(${state.zoom})`;
}

function zoomAt(factor, cx, cy) {
  const zoom = Math.min(20, Math.max(0.2, state.zoom * factor));
  state.panX = cx - ((cx - state.panX) * zoom) / state.zoom;
  state.panY = cy - ((cy - state.panY) * zoom) / state.zoom;
  state.zoom = zoom;
  applyTransform();
}

function fitMap() {
  const box = $("map").getBoundingClientRect();
  state.zoom = Math.min(box.width, box.height) / 1000 || 1;
  state.panX = (box.width - 1000 * state.zoom) / 2;
  state.panY = (box.height - 1000 * state.zoom) / 2;
  applyTransform();
}

$("map").addEventListener("wheel", (event) => {
  event.preventDefault();
  const box = $("map").getBoundingClientRect();
  zoomAt(event.deltaY < 0 ? 1.2 : 1 / 1.2, event.clientX - box.left, event.clientY - box.top);
}, { passive: false });
$("zoom-in").addEventListener("click", () => { const b = $("map").getBoundingClientRect(); zoomAt(1.25, b.width / 2, b.height / 2); });
$("zoom-out").addEventListener("click", () => { const b = $("map").getBoundingClientRect(); zoomAt(0.8, b.width / 2, b.height / 2); });
$("zoom-reset").addEventListener("click", fitMap);

async function setView(view) {
  state.view = view;
  $("grid-view").hidden = view !== "grid";
  $("map-view").hidden = view !== "map";
  $("view-grid").setAttribute("aria-pressed", String(view === "grid"));
  $("view-map").setAttribute("aria-pressed", String(view === "map"));
  if (view === "map" && !state.coords) {
    try {
      const answer = await api("/api/map");
      // A loop, not Math.min(...xs): spreading 100,000 arguments overflows the call stack.
      let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
      for (const p of answer.points) {
        x0 = Math.min(x0, p.x); x1 = Math.max(x1, p.x); y0 = Math.min(y0, p.y); y1 = Math.max(y1, p.y);
      }
      const scale = 920 / Math.max(x1 - x0, y1 - y0, 1e-9);
      state.coords = new Map(answer.points.map((p) => [p.id, [40 + (p.x - x0) * scale, 40 + (y1 - p.y) * scale]]));
      render();
    } catch (error) { status(error.message, true); return; }
  }
  if (view === "map") fitMap();
}
$("view-grid").addEventListener("click", () => setView("grid"));
$("view-map").addEventListener("click", () => setView("map"));

// Start: the classes of the feedback store and the limits.

(async () => {
  try {
    state.info = await api("/api/info");
    $("query-class").replaceChildren(new Option("(choose)", ""), ...state.info.classes.map((name) => new Option(name, name)));
  } catch (error) { status(error.message, true); }
})();
