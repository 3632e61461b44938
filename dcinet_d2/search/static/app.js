// The review page: one client of the JSON API (/docs). No framework, no build step.
"use strict";

const PAGE_SIZE = 24;
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const state = { page: 0, total: 0, open: null, upload: null, drag: null, last: null };

function params(obj) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v !== null && v !== undefined) p.set(k, v);
  return p.toString();
}

function imageUrl(image, frame, extra) { return "/api/frame/image?" + params({ image, frame, ...extra }); }
function cropUrl(image, frame, box) { return "/api/frame/crop?" + params({ image, frame, box: box.join(",") }); }
function label(image, frame) { return frame === null || frame === undefined ? image : image + "#" + frame; }

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const d = body.detail;
    const why = Array.isArray(d) ? d.map((e) => (e.loc || []).join(".") + ": " + e.msg).join("; ") : d;
    throw new Error(why || response.status + " " + response.statusText);
  }
  return body;
}

async function loadInfo() {
  const info = await api("/api/info");
  $("info").textContent = `${info.num_images} frames, ${info.num_boxes} detections (score >= ${info.det_thresh})`;
  const thresh = $("det-thresh");
  thresh.min = info.det_thresh;
  thresh.value = info.det_thresh;
  $("top-k").max = info.max_top_k;
  for (const camera of info.cameras) {
    const option = document.createElement("option");
    option.value = option.textContent = camera;
    $("camera").append(option);
  }
  $("camera-control").hidden = info.cameras.length === 0;
  $("time-control").hidden = !info.first_time;
  if (info.first_time) {
    $("since").min = $("until").min = info.first_time.slice(0, 19);
    $("since").max = $("until").max = info.last_time.slice(0, 19);
  }
}

// The camera and time span chosen (empty: any); times are read as UTC, as the index holds them.
function where() {
  return { camera: $("camera").value || null, since: $("since").value || null, until: $("until").value || null };
}

function placeAndTime(item) {
  return [item.camera, item.time && item.time.replace("T", " ").replace("Z", " UTC")].filter(Boolean).join(" · ");
}

async function loadPage(page) {
  const data = await api("/api/frames?" + params({ offset: page * PAGE_SIZE, limit: PAGE_SIZE, ...where() }));
  state.page = page;
  state.total = data.total;
  const pages = Math.max(1, Math.ceil(data.total / PAGE_SIZE));
  $("page-label").textContent = `page ${page + 1} of ${pages}`;
  $("prev").disabled = page === 0;
  $("next").disabled = page + 1 >= pages;
  const grid = $("grid");
  grid.replaceChildren();
  for (const f of data.frames) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "thumb";
    b.dataset.image = f.image;
    b.dataset.label = f.label;
    if (f.frame !== null) b.dataset.frame = f.frame;
    b.title = [f.label, placeAndTime(f)].filter(Boolean).join("\n");
    const img = document.createElement("img");
    img.loading = "lazy";
    img.alt = f.label;
    img.src = imageUrl(f.image, f.frame, { max_side: 240 });
    const span = document.createElement("span");
    span.textContent = `${f.label} · ${f.detections}`;
    b.append(img, span);
    b.addEventListener("click", () => openFrame(f.image, f.frame).catch((e) => status(e.message, true)));
    grid.append(b);
  }
}

function rect(box, cls) {
  const r = document.createElementNS(SVG, "rect");
  r.setAttribute("x", box[0]);
  r.setAttribute("y", box[1]);
  r.setAttribute("width", Math.max(0, box[2] - box[0]));
  r.setAttribute("height", Math.max(0, box[3] - box[1]));
  r.setAttribute("class", cls);
  $("overlay").append(r);
  return r;
}

function showImage(src, title) {
  return new Promise((resolve, reject) => {
    const img = $("frame-img");
    img.onload = () => {
      $("overlay").setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
      $("overlay").setAttribute("preserveAspectRatio", "none");
      resolve();
    };
    img.onerror = () => reject(new Error(`${title}: the image could not be shown`));
    $("overlay").replaceChildren();
    $("stage").hidden = false;
    $("viewer-title").textContent = title;
    img.src = src;
  });
}

// Opens a gallery frame with its detections; `mark` (a hit's box) is drawn on top.
async function openFrame(image, frame, mark) {
  frame = frame === undefined ? null : frame;
  const [detections] = await Promise.all([
    api("/api/frame?" + params({ image, frame })),
    showImage(imageUrl(image, frame), label(image, frame)),
  ]);
  state.open = { image, frame };
  state.upload = null;
  for (const t of document.querySelectorAll(".thumb")) {
    t.classList.toggle("open", t.dataset.label === label(image, frame));
  }
  const thresh = Number($("det-thresh").value);
  let shown = 0;
  // Best-scoring last, so that it lies on top where boxes overlap.
  for (const d of detections.boxes.slice().reverse()) {
    if (d.score < thresh) continue;
    const r = rect(d.box, "det");
    r.dataset.score = d.score;
    r.dataset.box = d.box.join(",");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `detection score ${d.score.toFixed(3)}: click to search for this person`;
    r.append(title);
    shown++;
  }
  if (mark) rect(mark, "hit-box");
  $("viewer-hint").textContent = `${shown} detected people (score >= ${thresh}): click one, or drag a box.`;
}

async function openUpload(file) {
  await showImage(URL.createObjectURL(file), file.name + " (uploaded)");
  state.upload = file;
  state.open = null;
  for (const t of document.querySelectorAll(".thumb")) t.classList.remove("open");
  $("viewer-hint").textContent = "Drag a box around the person to search for.";
}

function controls() {
  const w = where();
  return {
    top_k: Number($("top-k").value) || 10,
    det_thresh: Number($("det-thresh").value),
    one_per_image: $("one-per-image").checked,
    cameras: w.camera ? [w.camera] : [],
    since: w.since,
    until: w.until,
  };
}

// Queries `box` of the open frame or upload (`source`: the one of an earlier query, when filters change).
async function runQuery(box, source) {
  box = box.map((v) => Math.round(v * 100) / 100);
  const rerun = Boolean(source);
  source = source || { open: state.open, upload: state.upload };
  state.last = { box, source };
  if (!rerun) {
    for (const r of $("overlay").querySelectorAll(".query-box, .hit-box")) r.remove();
    rect(box, "query-box");
  }
  status("searching…");
  try {
    let answer;
    if (source.upload) {
      const form = new FormData();
      form.append("file", source.upload);
      form.append("box", box.join(","));
      for (const [k, v] of Object.entries(controls())) {
        if (Array.isArray(v)) for (const one of v) form.append(k, one);
        else if (v !== null) form.append(k, v);
      }
      answer = await api("/api/query/upload", { method: "POST", body: form });
    } else {
      const { image, frame } = source.open;
      const body = { image, frame, box, ...controls(),
                     exclude_images: $("exclude-query").checked && frame === null ? [image] : [] };
      answer = await api("/api/query", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify(body) });
    }
    showHits(answer);
    status(`${answer.hits.length} hits`);
  } catch (e) {
    status(e.message, true);
  }
}

// Appearances (video hits merged into runs of nearby frames) on one track per camera, placed by frame.
function showTimeline(answer) {
  const box = $("timeline");
  box.replaceChildren();
  const runs = answer.appearances || [];
  box.hidden = runs.length === 0;
  if (!runs.length) return;
  const title = document.createElement("h3");
  title.className = "span";
  title.textContent = `${runs.length} appearances in video (runs of nearby frames); click one to open it`;
  box.append(title);
  const byCamera = new Map();
  for (const a of runs) {
    const key = a.camera || a.image;
    if (!byCamera.has(key)) byCamera.set(key, []);
    byCamera.get(key).push(a);
  }
  for (const [camera, list] of byCamera) {
    const lo = Math.min(...list.map((a) => a.first_frame)), hi = Math.max(...list.map((a) => a.last_frame));
    const scale = (f) => (hi > lo ? (100 * (f - lo)) / (hi - lo + 1) : 0);
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "camera";
    name.textContent = name.title = camera;
    const track = document.createElement("div");
    track.className = "track";
    for (const a of list) {
      const seg = document.createElement("button");
      seg.type = "button";
      seg.className = "segment";
      seg.dataset.bestRank = a.best_rank;
      seg.style.left = scale(a.first_frame) + "%";
      seg.style.width = Math.max(0, scale(a.last_frame + 1) - scale(a.first_frame)) + "%";
      const when = a.start ? `, ${a.start.slice(11, 23)}–${a.end.slice(11, 23)}` : "";
      seg.title = `frames ${a.first_frame}–${a.last_frame}${when}: ${a.ranks.length} hits, best #${a.best_rank} ` +
        `(similarity ${a.similarity.toFixed(3)})`;
      const best = answer.hits[a.best_rank - 1];
      seg.addEventListener("click", () => openFrame(best.image, best.frame, best.box)
        .catch((e) => status(e.message, true)));
      track.append(seg);
    }
    row.append(name, track);
    box.append(row);
  }
}

function showHits(answer) {
  showTimeline(answer);
  $("query-label").textContent = `Query: ${answer.query.image}, box ${answer.query.box.map(Math.round).join(",")}` +
    (answer.hits.length ? "" : " — no gallery detection passes the filters.");
  const list = $("hits");
  list.replaceChildren();
  for (const h of answer.hits) {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "hit";
    b.dataset.rank = h.rank;
    b.dataset.label = label(h.image, h.frame);
    b.title = "open this frame";
    const img = document.createElement("img");
    img.alt = `hit ${h.rank}`;
    img.src = cropUrl(h.image, h.frame, h.box);
    const text = document.createElement("span");
    text.innerHTML = `<span class="rank">#${h.rank}</span> sim <b>${h.similarity.toFixed(3)}</b><br>` +
      `det ${h.score.toFixed(3)}<span class="label"></span><span class="label where"></span>`;
    text.querySelector(".label").textContent = label(h.image, h.frame);
    text.querySelector(".where").textContent = placeAndTime(h);
    b.append(img, text);
    b.addEventListener("click", () => openFrame(h.image, h.frame, h.box).catch((e) => status(e.message, true)));
    li.append(b);
    list.append(li);
  }
}

function imagePoint(ev) {
  const svg = $("overlay");
  const p = svg.createSVGPoint();
  p.x = ev.clientX;
  p.y = ev.clientY;
  return p.matrixTransform(svg.getScreenCTM().inverse());
}

function setupDrag() {
  const svg = $("overlay");
  // A press and release on the same spot is a click (on a detected person: query that box); a drag draws
  // a box anywhere, over detections too, and queries it.
  svg.addEventListener("pointerdown", (ev) => {
    if (!state.open && !state.upload) return;
    const start = imagePoint(ev);
    const picked = ev.target.dataset && ev.target.dataset.box ? ev.target.dataset.box.split(",").map(Number) : null;
    state.drag = { start, picked, rect: rect([start.x, start.y, start.x, start.y], "drag") };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!state.drag) return;
    const p = imagePoint(ev), s = state.drag.start, r = state.drag.rect;
    r.setAttribute("x", Math.min(s.x, p.x));
    r.setAttribute("y", Math.min(s.y, p.y));
    r.setAttribute("width", Math.abs(p.x - s.x));
    r.setAttribute("height", Math.abs(p.y - s.y));
  });
  svg.addEventListener("pointerup", (ev) => {
    if (!state.drag) return;
    const p = imagePoint(ev), s = state.drag.start, picked = state.drag.picked;
    state.drag.rect.remove();
    state.drag = null;
    const box = [Math.min(s.x, p.x), Math.min(s.y, p.y), Math.max(s.x, p.x), Math.max(s.y, p.y)];
    if (box[2] - box[0] >= 4 && box[3] - box[1] >= 4) runQuery(box);
    else if (picked) runQuery(picked);
  });
}

function start() {
  $("prev").addEventListener("click", () => loadPage(state.page - 1).catch((e) => status(e.message, true)));
  $("next").addEventListener("click", () => loadPage(state.page + 1).catch((e) => status(e.message, true)));
  $("upload").addEventListener("change", (ev) => {
    if (ev.target.files.length) openUpload(ev.target.files[0]).catch((e) => status(e.message, true));
  });
  for (const id of ["camera", "since", "until"]) {
    $(id).addEventListener("change", () => {
      loadPage(0).catch((e) => status(e.message, true));
      if (state.last) runQuery(state.last.box, state.last.source);
    });
  }
  $("det-thresh").addEventListener("change", () => {
    if (state.open) openFrame(state.open.image, state.open.frame).catch((e) => status(e.message, true));
  });
  setupDrag();
  loadInfo().then(() => loadPage(0)).catch((e) => status(e.message, true));
}

start();
