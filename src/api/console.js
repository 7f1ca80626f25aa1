"use strict";
// The console: one page, no dependencies, data from this node's JSON routes
// only. Everything shown that comes from a node is set with textContent (never
// as HTML), and every name is percent-encoded before it goes into a URL.
(() => {
  const REFRESH_MS = 2000;
  const FETCH_MS = 5000;
  const PAGE = 25;
  const $ = (id) => document.getElementById(id);

  // Page state; `prefix` and `consistent` also live in the URL fragment, so a
  // view can be bookmarked (e.g. `/#prefix=web.&consistent=1`).
  const state = { prefix: "", after: null, pages: [], next: null, auto: false };
  const consistent = new Map(); // name -> {state, text}
  let lastGood = null;

  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.prefix = p.get("prefix") || "";
    state.auto = p.get("consistent") === "1";
    $("prefix").value = state.prefix;
    $("auto-consistent").checked = state.auto;
  }

  function writeHash() {
    const p = new URLSearchParams();
    if (state.prefix) p.set("prefix", state.prefix);
    if (state.auto) p.set("consistent", "1");
    const h = p.toString();
    history.replaceState(null, "", h ? "#" + h : location.pathname);
  }

  // Like encodeURIComponent, but also escapes what it leaves alone except
  // RFC 3986's unreserved characters, so "." and ".." stay names, not paths.
  function encName(name) {
    return encodeURIComponent(name).replace(/[!'()*.]/g,
      (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0"));
  }

  // JSON.parse, keeping integers too large for a double exact: outside
  // strings, a run of 16 or more digits is quoted before parsing. Counts are
  // u64 and values u128; only their display matters here.
  function parseJson(text) {
    let out = "", i = 0, inString = false;
    while (i < text.length) {
      const c = text[i];
      if (inString) {
        out += c;
        if (c === "\\") { out += text[i + 1] || ""; i += 2; continue; }
        if (c === '"') inString = false;
        i++;
      } else if (c === '"') {
        inString = true; out += c; i++;
      } else if (c >= "0" && c <= "9") {
        let j = i;
        while (j < text.length && /[0-9.eE+-]/.test(text[j])) j++;
        const tok = text.slice(i, j);
        out += (/^[0-9]{16,}$/.test(tok)) ? '"' + tok + '"' : tok;
        i = j;
      } else {
        out += c; i++;
      }
    }
    return JSON.parse(out);
  }

  // The client token, when the node asks for one (a 401): kept for this
  // tab only, sent as Authorization: Bearer.
  const TOKEN_KEY = "tally-token";
  let tokenRefused = false;

  function savedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  // One request with a deadline, asking for a token once when the node
  // answers 401; resolves to {status, text, json}.
  async function call(path, init) {
    let r = await callOnce(path, init);
    if (r.status === 401 && !tokenRefused) {
      const given = window.prompt(
        "This node needs a client token (read scope to watch, write to increment):", "");
      if (given && given.trim()) {
        try { sessionStorage.setItem(TOKEN_KEY, given.trim()); } catch (e) { /* kept nowhere */ }
        r = await callOnce(path, init);
      } else {
        // Cancelled: do not ask again on every refresh; reload the page to.
        tokenRefused = true;
      }
    }
    return r;
  }

  // One request with a deadline. Rejects only when no answer came.
  async function callOnce(path, init) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_MS);
    const options = Object.assign({ cache: "no-store", signal: ctl.signal }, init || {});
    const token = savedToken();
    if (token) {
      options.headers = Object.assign({}, options.headers || {}, { "Authorization": "Bearer " + token });
    }
    try {
      const r = await fetch(path, options);
      const text = await r.text();
      let json = null;
      if ((r.headers.get("content-type") || "").startsWith("application/json")) {
        try { json = parseJson(text); } catch (e) { json = null; }
      }
      return { status: r.status, text, json };
    } catch (e) {
      throw new Error(e && e.name === "AbortError" ? "no answer within " + FETCH_MS / 1000 + " s" : String(e && e.message || e));
    } finally {
      clearTimeout(timer);
    }
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function td(text, cls) { return el("td", text, cls); }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  function bytes(n) {
    n = Number(n);
    if (!isFinite(n)) return "?";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? n : n.toFixed(1)) + " " + units[u];
  }

  function duration(secs) {
    secs = Number(secs);
    if (!isFinite(secs)) return "?";
    const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600),
      m = Math.floor(secs % 3600 / 60), s = Math.floor(secs % 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function clock(date) {
    return [date.getHours(), date.getMinutes(), date.getSeconds()]
      .map((n) => String(n).padStart(2, "0")).join(":");
  }

  function showBanner(message) {
    const b = $("banner");
    if (message) {
      b.textContent = message;
      b.hidden = false;
    } else {
      b.textContent = "";
      b.hidden = true;
    }
  }

  // ---------------------------------------------------------------- cluster

  // Node ids by actor: from each node's own status, else from what its
  // peers last heard from it.
  function ids(cluster) {
    const out = new Map();
    for (const n of cluster.nodes) {
      for (const p of (n.status && n.status.peers) || []) {
        if (p.node !== null && p.node !== undefined) out.set(p.actor, p.node);
      }
    }
    for (const n of cluster.nodes) {
      if (n.status) out.set(n.actor, n.status.id);
    }
    return out;
  }

  function renderNodes(cluster) {
    const body = $("nodes").tBodies[0];
    clear(body);
    const known = ids(cluster);
    for (const n of cluster.nodes) {
      const s = n.status || null;
      const id = known.get(n.actor);
      const tr = document.createElement("tr");
      tr.dataset.actor = n.actor;
      tr.dataset.reachable = String(!!n.reachable);
      tr.dataset.me = String(!!n.me);
      tr.dataset.leaving = String(!!n.leaving);
      if (id !== undefined) tr.dataset.id = String(id);
      if (n.me) tr.className = "me";

      const who = td(null);
      who.appendChild(el("span", id !== undefined ? "node " + id : "node ?"));
      who.appendChild(el("span", " " + n.actor, "mono muted"));
      if (n.me) who.appendChild(el("span", "this node", "tag"));
      if (n.leaving) who.appendChild(el("span", "leaving", "tag leaving"));
      tr.appendChild(who);

      const state = td(null, "state");
      if (n.reachable) {
        state.appendChild(el("span", "reachable", "ok"));
      } else {
        state.appendChild(el("span", "unreachable", "bad"));
        if (n.error) state.appendChild(el("div", n.error, "muted reason"));
      }
      tr.appendChild(state);

      tr.appendChild(td(s && s.role ? s.role.replace("_", " ") : "?"));
      tr.appendChild(td(s && s.config ? "v" + s.config.version : "?", "num config-version"));
      tr.appendChild(td(s ? s.names : "?", "num names"));
      tr.appendChild(td(s ? bytes(s.data_bytes) : "?", "num data"));

      const storage = td(null, "storage");
      if (s && s.storage) {
        storage.dataset.healthy = String(!!s.storage.healthy);
        if (s.storage.healthy) {
          storage.appendChild(el("span", "healthy", "ok"));
        } else {
          storage.appendChild(el("span", "unhealthy", "bad"));
          if (s.storage.problem) storage.appendChild(el("div", s.storage.problem, "muted"));
        }
        if (Number(s.storage.errors) > 0) {
          storage.appendChild(el("div", s.storage.errors + " errors, " + s.storage.recoveries + " recoveries", "muted"));
        }
      } else {
        storage.textContent = "?";
      }
      tr.appendChild(storage);

      tr.appendChild(td(s ? duration(s.uptime_secs) : "?", "num uptime"));
      tr.appendChild(td(n.rtt_ms === null || n.rtt_ms === undefined ? "–" : Number(n.rtt_ms).toFixed(1) + " ms", "num rtt"));
      body.appendChild(tr);
    }
  }

  // The newest config any reachable node reports.
  function newestConfig(cluster) {
    let best = null;
    for (const n of cluster.nodes) {
      const c = n.status && n.status.config;
      if (c && (!best || Number(c.version) > Number(best.version))) best = c;
    }
    return best;
  }

  function renderConfig(cluster) {
    const box = $("config");
    clear(box);
    box.className = "";
    const c = newestConfig(cluster);
    if (!c || !c.actors || c.actors.length === 0) {
      box.className = "muted";
      box.textContent = "no config posted yet (POST /config with {\"actors\": [...]})";
      return;
    }
    box.dataset.version = String(c.version);
    box.appendChild(el("div", "version " + c.version + " (posted by node " + c.origin + ")"));
    const actors = el("ul", null, "plain mono");
    actors.id = "config-actors";
    for (const a of c.actors) {
      const li = el("li", a);
      li.dataset.actor = a;
      actors.appendChild(li);
    }
    box.appendChild(el("div", "actors", "muted"));
    box.appendChild(actors);
    const leaving = el("ul", null, "plain");
    leaving.id = "config-leaving";
    for (const l of c.leaving || []) {
      const li = el("li");
      li.dataset.actor = l.actor;
      li.dataset.handedOff = String(!!l.handed_off);
      li.appendChild(el("span", l.actor + " ", "mono"));
      li.appendChild(l.handed_off ? el("span", "handed off", "ok") : el("span", "handing off", "warn"));
      leaving.appendChild(li);
    }
    box.appendChild(el("div", "leaving", "muted"));
    if (leaving.children.length) box.appendChild(leaving);
    else box.appendChild(el("div", "none", "muted"));
    if (c.read_set && c.read_set.length) {
      box.appendChild(el("div", "consistent reads hear from: " + c.read_set.join(", "), "muted"));
    }
    if (Number(c.version) !== Number(cluster.config_version)) {
      box.appendChild(el("div", "this node still has version " + cluster.config_version, "warn"));
    }
  }

  function renderLag(cluster) {
    const table = $("lag");
    const head = table.tHead, body = table.tBodies[0];
    clear(head); clear(body);
    const actors = cluster.nodes.map((n) => n.actor);
    const hr = document.createElement("tr");
    hr.appendChild(el("th", "from \\ to"));
    for (const a of actors) hr.appendChild(el("th", a, "mono num"));
    head.appendChild(hr);
    for (const n of cluster.nodes) {
      const tr = document.createElement("tr");
      tr.dataset.from = n.actor;
      tr.appendChild(el("th", n.actor, "mono"));
      const peers = new Map(((n.status && n.status.peers) || []).map((p) => [p.actor, p]));
      for (const a of actors) {
        const cell = td(null, "num");
        cell.dataset.to = a;
        if (a === n.actor) {
          cell.textContent = "–";
          cell.className = "num muted";
        } else if (!n.status) {
          cell.textContent = "?";
          cell.className = "num muted";
          cell.title = "node unreachable";
        } else if (!peers.has(a)) {
          cell.textContent = "not a peer";
          cell.className = "num muted";
        } else {
          const p = peers.get(a);
          cell.dataset.lag = String(p.lag_changes);
          cell.textContent = String(p.lag_changes);
          if (p.pending_push) cell.textContent += " (" + p.pending_push + ")";
          if (p.reachable === false) {
            cell.appendChild(el("div", "unreachable" + (p.last_error ? ": " + p.last_error : ""), "bad"));
          }
        }
        tr.appendChild(cell);
      }
      body.appendChild(tr);
    }
  }

  async function refreshCluster() {
    let r;
    try {
      r = await call("/status/cluster?timeout=2s");
    } catch (e) {
      throw new Error("cannot reach this node (" + location.host + "): " + e.message);
    }
    if (r.status !== 200 || !r.json) {
      const why = r.json && r.json.error ? r.json.error : r.text.slice(0, 200);
      throw new Error("this node answered " + r.status + " to /status/cluster: " + why);
    }
    const cluster = r.json;
    const me = cluster.nodes.find((n) => n.me);
    $("whoami").textContent = "node " + cluster.from + (me ? " at " + me.actor : "") +
      ", config version " + cluster.config_version + ", " + cluster.nodes.length + " nodes";
    renderNodes(cluster);
    renderConfig(cluster);
    renderLag(cluster);
  }

  // --------------------------------------------------------------- counters

  function renderConsistent(cell, name) {
    const out = cell.querySelector(".consistent-result");
    const c = consistent.get(name);
    out.textContent = c ? c.text : "";
    out.className = "consistent-result " + (c ? (c.state === "ok" ? "ok" : c.state === "pending" ? "muted" : "bad") : "");
    if (c) out.dataset.state = c.state; else delete out.dataset.state;
  }

  async function consistentRead(name) {
    consistent.set(name, { state: "pending", text: "reading…" });
    rerenderConsistent(name);
    let result;
    try {
      const r = await call("/counter/" + encName(name) + "/consistent_value?timeout=2s");
      if (r.status === 200) {
        result = { state: "ok", text: r.text };
      } else if (r.json) {
        let text = r.json.error || ("answer " + r.status);
        if (Array.isArray(r.json.unreachable) && r.json.unreachable.length) {
          text += " [unreachable: " + r.json.unreachable.join(", ") + "]";
        }
        if (r.json.best_known_value !== undefined) text += " (best known value " + r.json.best_known_value + ")";
        result = { state: "unavailable", text: r.status + ": " + text };
      } else {
        result = { state: "error", text: r.status + ": " + r.text.slice(0, 200) };
      }
    } catch (e) {
      result = { state: "error", text: e.message };
    }
    consistent.set(name, result);
    rerenderConsistent(name);
  }

  function rerenderConsistent(name) {
    for (const tr of $("counters").tBodies[0].rows) {
      if (tr.dataset.name === name) renderConsistent(tr.cells[3], name);
    }
  }

  function renderCounters(listing, views) {
    const body = $("counters").tBodies[0];
    clear(body);
    listing.counters.forEach((c, i) => {
      const tr = document.createElement("tr");
      tr.dataset.name = c.name;
      tr.appendChild(td(c.name, "name mono"));
      const value = td(c.value, "num value");
      value.dataset.value = String(c.value);
      tr.appendChild(value);
      const comps = td(null, "components");
      const v = views[i];
      if (v && v.ok) {
        const ul = el("ul", null, "plain inline mono");
        for (const k of v.json.components || []) {
          const li = el("li", "node " + k.node + ": " + k.count);
          li.dataset.node = String(k.node);
          li.dataset.count = String(k.count);
          try { li.title = "incarnation " + BigInt(k.incarnation).toString(16); } catch (e) { /* not shown */ }
          ul.appendChild(li);
        }
        comps.appendChild(ul);
      } else {
        comps.appendChild(el("span", v ? v.error : "?", "bad"));
      }
      tr.appendChild(comps);
      const cons = td(null, "consistent");
      const button = el("button", "consistent read");
      button.type = "button";
      button.addEventListener("click", () => consistentRead(c.name));
      cons.appendChild(button);
      cons.appendChild(document.createTextNode(" "));
      cons.appendChild(el("span", null, "consistent-result"));
      tr.appendChild(cons);
      body.appendChild(tr);
      renderConsistent(cons, c.name);
    });
    const note = $("counters-note");
    const shown = listing.counters.length;
    note.textContent = shown === 0
      ? (state.prefix ? "no counter starts with \"" + state.prefix + "\"" : "no counters yet")
      : "page " + (state.pages.length + 1) + ": " + shown + " counter" + (shown === 1 ? "" : "s") +
        (state.prefix ? " starting with \"" + state.prefix + "\"" : "") + (listing.next ? ", more on the next page" : "");
    state.next = listing.next;
    $("next").disabled = !listing.next;
    $("first").disabled = state.pages.length === 0;
  }

  async function refreshCounters() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (state.prefix) q.set("prefix", state.prefix);
    if (state.after !== null) q.set("after", state.after);
    const r = await call("/counters?" + q.toString());
    if (r.status !== 200 || !r.json) {
      throw new Error("this node answered " + r.status + " to /counters: " + (r.json && r.json.error || r.text.slice(0, 200)));
    }
    const listing = r.json;
    const views = await Promise.all(listing.counters.map(async (c) => {
      try {
        const v = await call("/counter/" + encName(c.name));
        return v.status === 200 && v.json ? { ok: true, json: v.json }
          : { ok: false, error: v.status + ": " + (v.json && v.json.error || v.text.slice(0, 200)) };
      } catch (e) {
        return { ok: false, error: e.message };
      }
    }));
    renderCounters(listing, views);
    if (state.auto) {
      await Promise.all(listing.counters.map((c) => consistentRead(c.name)));
    }
  }

  // ---------------------------------------------------------------- history

  // The charts: inline SVG drawn from `/status/history` (this node's samples,
  // one a second, oldest first, as columns). Each line is a <path> that
  // carries its series for whoever reads the page: data-series (and
  // data-peer for a peer's lag), data-points (samples with a value),
  // data-last (the newest value) and data-max.
  const W = 600, H = 100;
  // A short history is drawn over a minute at least, so it grows from the right.
  const MIN_SPAN_MS = 60000;
  const CHARTS = [
    { key: "increments", title: "increments/s per node", lines: (h, others) => [
      { series: "increments_per_sec", label: "this node", values: h.increments_per_sec, color: 0 }]
      .concat(perNode(others, "increments_per_sec")) },
    { key: "consistent", title: "consistent reads/s per node", lines: (h, others) => [
      { series: "consistent_ok_per_sec", label: "200", values: h.consistent_ok_per_sec, color: 2 },
      { series: "consistent_failed_per_sec", label: "503", values: h.consistent_failed_per_sec, color: 1 }]
      .concat(perNode(others, "consistent_ok_per_sec", " 200")) },
    { key: "latency", title: "consistent read latency, mean (ms)", lines: (h, others) => [
      { series: "consistent_read_ms", label: "this node", values: h.consistent_read_ms, color: 3 }]
      .concat(perNode(others, "consistent_read_ms")) },
    { key: "lag", title: "replication lag per peer (changes not merged)", lines: (h) =>
      (h.peers || []).map((p, i) => ({ series: "lag_changes", peer: p.actor, label: p.actor, values: p.lag_changes,
        reachable: p.reachable, color: i % 6 })) },
    { key: "storage", title: "storage healthy", bands: true, lines: (h) => [
      { series: "storage_healthy", label: "healthy", values: (h.storage_healthy || []).map((b) => b ? 1 : 0), color: 2 }] },
  ];

  // The other nodes' lines of one series: each on its own samples' times
  // (data-node names it); a node that did not answer has an empty line.
  function perNode(others, series, suffix) {
    return others.map((o, i) => ({
      series, node: o.actor, label: o.actor + (suffix || "") + (o.h ? "" : " (no answer)"),
      values: o.h ? o.h[series] : [], at: o.h ? o.h.at_ms : [], color: (i + 4) % 6 }));
  }

  function num(v) {
    v = Number(v);
    if (!isFinite(v)) return "?";
    if (v === 0 || Math.abs(v) >= 100) return v.toFixed(0);
    return String(Number(v.toPrecision(3)));
  }

  // 1, 2 or 5 times a power of ten, at least `v` (1 for nothing).
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function chartFigure(def) {
    const id = "chart-" + def.key;
    let fig = $(id);
    if (fig) return fig;
    fig = $("chart-template").content.firstElementChild.cloneNode(true);
    fig.id = id;
    fig.dataset.chart = def.key;
    fig.querySelector(".title").textContent = def.title;
    $("charts").appendChild(fig);
    return fig;
  }

  function svgChild(parent, tag, attrs, cls) {
    const e = document.createElementNS(parent.namespaceURI, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (cls) e.setAttribute("class", cls);
    parent.appendChild(e);
    return e;
  }

  function renderHistory(h, others) {
    const at = h.at_ms || [];
    const n = at.length;
    const box = $("charts");
    box.dataset.samples = String(n);
    box.dataset.node = String(h.node);
    const end = n ? Number(at[n - 1]) : 0;
    const step = Number(h.interval_ms) || 1000;
    const span = Math.max(MIN_SPAN_MS, n ? end - Number(at[0]) + step : 0);
    const x = (t) => (W - (end - Number(t)) / span * W).toFixed(1);
    $("history-span").textContent = n
      ? n + " sample" + (n === 1 ? "" : "s") + " up to " + clock(new Date(end))
      : "no samples yet";
    for (const def of CHARTS) {
      const fig = chartFigure(def);
      const lines = def.lines(h, others);
      let max = 0;
      for (const l of lines) {
        for (const v of l.values || []) if (v !== null && Number(v) > max) max = Number(v);
      }
      const top = def.bands ? 1 : niceMax(max);
      const y = (v) => (H - 2 - Number(v) / top * (H - 4)).toFixed(1);
      const svg = fig.querySelector("svg");
      const group = svg.querySelector(".lines"), bands = svg.querySelector(".bands");
      const legends = fig.querySelector(".legends");
      clear(group); clear(bands); clear(legends);
      for (const l of lines) {
        const values = l.values || [];
        let d = "", pen = false, points = 0, last = null, lineMax = null;
        const times = l.at || at;
        for (let i = 0; i < times.length; i++) {
          const v = values[i];
          if (v === null || v === undefined) { pen = false; continue; }
          // A run's first point is also a dot (a round cap on a segment of
          // no length), so a value between two gaps shows.
          d += pen ? "L" + x(times[i]) + " " + y(v) : "M" + x(times[i]) + " " + y(v) + "l0 0";
          pen = true;
          points++;
          last = Number(v);
          lineMax = lineMax === null ? last : Math.max(lineMax, last);
        }
        const path = svgChild(group, "path", { d: d || "M0 0" }, "line c" + l.color);
        path.dataset.series = l.series;
        if (l.peer !== undefined) path.dataset.peer = l.peer;
        if (l.node !== undefined) path.dataset.node = l.node;
        path.dataset.points = String(points);
        path.dataset.last = last === null ? "" : String(last);
        path.dataset.max = lineMax === null ? "" : String(lineMax);
        const item = el("span", null, "legend");
        item.appendChild(el("span", null, "swatch c" + l.color));
        const shown = def.bands ? (last === null ? "?" : last ? "yes" : "no") : (last === null ? "–" : num(last));
        item.appendChild(el("span", l.label + " " + shown, l.peer !== undefined || l.node !== undefined ? "mono" : null));
        if (l.reachable) {
          // A peer's reachability at the newest sample that names it.
          const r = l.reachable.filter((v) => v !== null && v !== undefined).pop();
          path.dataset.reachable = r === undefined ? "" : String(r);
          if (r === false) item.appendChild(el("span", " unreachable", "bad"));
        }
        legends.appendChild(item);
      }
      if (def.bands && lines.length) {
        // A band per run of equal values: green healthy, red not.
        const values = lines[0].values || [];
        let from = 0;
        for (let i = 1; i <= n; i++) {
          if (i < n && values[i] === values[from]) continue;
          const x0 = Number(x(Number(at[from]) - step)), x1 = Number(x(at[i - 1]));
          svgChild(bands, "rect", { x: Math.max(0, x0), y: 0, width: Math.max(0, x1 - Math.max(0, x0)), height: H },
            "band " + (values[from] ? "ok" : "bad"));
          from = i;
        }
      }
      if (!lines.length) legends.appendChild(el("span", "no peers", "muted"));
      fig.querySelector(".from").textContent = "−" + duration(span / 1000);
      fig.querySelector(".top").textContent = def.bands ? "" : "top " + num(top);
    }
  }

  async function refreshHistory() {
    const [r, c] = await Promise.all([call("/status/history"), call("/status/cluster/history").catch(() => null)]);
    if (r.status !== 200 || !r.json) {
      throw new Error("this node answered " + r.status + " to /status/history: " + (r.json && r.json.error || r.text.slice(0, 200)));
    }
    // The other nodes' histories, gathered by this node: charted beside its
    // own when they come; this node's charts do not wait on them.
    const others = c && c.status === 200 && c.json && c.json.nodes
      ? c.json.nodes.filter((n) => !n.me).map((n) => ({ actor: n.actor, h: n.history })) : [];
    renderHistory(r.json, others);
  }

  // ---------------------------------------------------------------- refresh

  let timer = null;
  let running = false;
  let again = false;

  // One refresh at a time; a request for one while it runs (a click, a new
  // filter) starts the next as soon as it ends.
  async function refresh() {
    if (running) { again = true; return; }
    running = true;
    again = false;
    clearTimeout(timer);
    const errors = [];
    await Promise.all([
      refreshCluster().catch((e) => errors.push(e.message)),
      refreshCounters().catch((e) => errors.push(e.message)),
      refreshHistory().catch((e) => errors.push(e.message)),
    ]);
    const now = new Date();
    const u = $("updated");
    if (errors.length === 0) {
      lastGood = now;
      u.textContent = "updated " + clock(now);
      u.dataset.refreshes = String(Number(u.dataset.refreshes) + 1);
      showBanner(null);
    } else {
      showBanner(errors.join("; ") + (lastGood ? " (data shown is from " + clock(lastGood) + ")" : ""));
      u.textContent = "update failed " + clock(now) + (lastGood ? ", last updated " + clock(lastGood) : "");
    }
    u.dataset.failed = String(errors.length > 0);
    running = false;
    timer = setTimeout(refresh, again ? 0 : REFRESH_MS);
  }

  $("filter").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.prefix = $("prefix").value;
    state.after = null;
    state.pages = [];
    writeHash();
    refresh();
  });
  $("first").addEventListener("click", () => {
    state.after = null;
    state.pages = [];
    refresh();
  });
  $("next").addEventListener("click", () => {
    if (!state.next) return;
    state.pages.push(state.after);
    state.after = state.next;
    refresh();
  });
  $("auto-consistent").addEventListener("change", (ev) => {
    state.auto = ev.target.checked;
    writeHash();
    if (state.auto) refresh();
  });
  $("increment").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = $("incr-name").value;
    const amount = $("incr-amount").value.trim();
    const out = $("incr-result");
    out.className = "mono";
    if (!name) { out.textContent = "a name is needed"; return; }
    try {
      const r = await call("/counter/" + encName(name), { method: "POST", body: amount, headers: { "content-type": "text/plain" } });
      if (r.status === 200) {
        out.textContent = name + " is now " + r.text + " on this node";
        out.className = "mono ok";
      } else {
        out.textContent = r.status + ": " + (r.json && r.json.error || r.text.slice(0, 200));
        out.className = "mono bad";
      }
    } catch (e) {
      out.textContent = e.message;
      out.className = "mono bad";
    }
    refresh();
  });
  window.addEventListener("hashchange", () => {
    readHash();
    state.after = null;
    state.pages = [];
    refresh();
  });

  readHash();
  refresh();
})();
