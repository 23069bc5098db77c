// chromastream viewer: one card per stream, live video over WHEP, metadata on a data channel,
// click-to-hint. Plain script, no build step; runs in Chromium and Firefox.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const RECONNECT_MIN_MS = 500;
  const RECONNECT_MAX_MS = 8000;
  const ICE_GATHER_MS = 2000;
  const RTP_KEEP = 600; // frame timestamps kept per stream for matching metadata to pictures

  // Authentication is the server's session cookie (HttpOnly: this script never sees it), set when the
  // page is opened once with ?token=; the browser sends it with every same-origin request. The token
  // itself is kept nowhere in the browser; an older version of this page stored it, so remove that copy.
  localStorage.removeItem("chromastream.token");

  const grid = document.getElementById("grid");
  const statusLine = document.getElementById("status");
  const template = document.getElementById("card-template");
  const VERDICT_MEANING = {
    real: "Faces look real: the calibrated probability is clearly below the detector's threshold.",
    fake: "A face looks synthetic or manipulated: the probability is clearly above the threshold.",
    uncertain: "Too close to the threshold to call: treat as unknown, not as real.",
    no_face: "No face in the sampled frames: there is nothing to judge, so no probability is given.",
    off: "The deepfake detector is off for this stream.",
  };
  const viewers = new Map(); // stream id -> Viewer

  async function api(method, path, body) {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
    if (!response.ok) {
      const message = (data && data.error) || response.status + " " + response.statusText;
      throw new Error(message);
    }
    return data;
  }

  // Lab (L fixed) -> sRGB, only to draw a swatch for a hint the server returns as a/b.
  function labToHex(a, b, L) {
    L = L === undefined ? 65 : L;
    const fy = (L + 16) / 116, fx = fy + a / 500, fz = fy - b / 200;
    const inv = (t) => (t ** 3 > 0.008856 ? t ** 3 : (t - 16 / 116) / 7.787);
    const X = 0.95047 * inv(fx), Y = inv(fy), Z = 1.08883 * inv(fz);
    const lin = [
      3.2406 * X - 1.5372 * Y - 0.4986 * Z,
      -0.9689 * X + 1.8758 * Y + 0.0415 * Z,
      0.0557 * X - 0.2040 * Y + 1.0570 * Z,
    ];
    return "#" + lin.map((c) => {
      c = Math.max(0, Math.min(1, c));
      c = c <= 0.0031308 ? 12.92 * c : 1.055 * c ** (1 / 2.4) - 0.055;
      return Math.round(c * 255).toString(16).padStart(2, "0");
    }).join("");
  }

  function waitForIce(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (pc.iceGatheringState === "complete") done(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(done, ICE_GATHER_MS);
    });
  }

  class Viewer {
    constructor(info) {
      this.id = info.id;
      this.card = template.content.firstElementChild.cloneNode(true);
      this.card.dataset.stream = this.id;
      this.video = this.card.querySelector(".video");
      this.video.dataset.stream = this.id;
      this.marker = this.card.querySelector(".marker");
      this.overlay = this.card.querySelector(".overlay");
      this.errorLine = this.card.querySelector(".error");
      this.colour = this.card.querySelector(".hint-colour");
      this.applyButton = this.card.querySelector(".apply-hint");
      this.card.querySelector(".name").textContent = this.id;
      this.pc = null;
      this.location = null;
      this.closed = false;
      this.retryMs = RECONNECT_MIN_MS;
      this.retryTimer = null;
      this.pending = null; // {x, y} normalized, waiting for a colour
      this.metadata = null;
      this.metadataCount = 0;
      this.metadataByRtp = new Map();
      this.frameRtp = [];
      this.arrivals = [];
      this.bind();
      this.update(info);
      this.connect();
      this.loadHints();
      this.watchFrames();
    }

    bind() {
      this.card.querySelector(".stage").addEventListener("click", (event) => this.pick(event));
      this.card.querySelector(".show-original").addEventListener("change", (event) => {
        this.video.classList.toggle("original", event.target.checked);
      });
      this.colour.addEventListener("change", () => { if (this.pending) this.applyHint(); });
      this.applyButton.addEventListener("click", () => this.applyHint());
      this.card.querySelector(".clear-hints").addEventListener("click", () =>
        this.run(async () => { await api("DELETE", this.path("/hints")); this.renderHints([]); }));
      this.card.querySelector(".reset").addEventListener("click", () =>
        this.run(() => api("POST", this.path("/reset"))));
      this.card.querySelector(".remove").addEventListener("click", () =>
        this.run(async () => { await api("DELETE", this.path("")); refresh(); }));
    }

    path(suffix) { return "/api/streams/" + encodeURIComponent(this.id) + suffix; }

    async run(action) {
      try {
        await action();
        this.showError("");
      } catch (error) {
        this.showError(error.message);
      }
    }

    showError(message) {
      this.errorLine.textContent = message;
      this.errorLine.hidden = !message;
    }

    // Where on the picture the click landed, in normalized coordinates of the video itself
    // (object-fit letterboxing included), so the hint lands on the same pixel at any size.
    normalized(event) {
      const rect = this.video.getBoundingClientRect();
      const vw = this.video.videoWidth || rect.width, vh = this.video.videoHeight || rect.height;
      const scale = Math.min(rect.width / vw, rect.height / vh);
      const w = vw * scale, h = vh * scale;
      const left = rect.left + (rect.width - w) / 2, top = rect.top + (rect.height - h) / 2;
      const x = (event.clientX - left) / w, y = (event.clientY - top) / h;
      if (x < 0 || x > 1 || y < 0 || y > 1) return null;
      return { x, y, px: event.clientX - rect.left, py: event.clientY - rect.top };
    }

    pick(event) {
      const point = this.normalized(event);
      if (!point) return;
      this.pending = { x: point.x, y: point.y };
      this.marker.style.left = point.px + "px";
      this.marker.style.top = point.py + "px";
      this.marker.hidden = false;
      this.applyButton.disabled = false;
    }

    async applyHint() {
      if (!this.pending) return;
      const hint = {
        x: Number(this.pending.x.toFixed(4)),
        y: Number(this.pending.y.toFixed(4)),
        rgb: this.colour.value,
        radius: Number(this.card.querySelector(".hint-size").value),
      };
      await this.run(async () => {
        const data = await api("POST", this.path("/hints"), hint);
        this.renderHints(data.hints);
        this.pending = null;
        this.marker.hidden = true;
        this.applyButton.disabled = true;
      });
    }

    async loadHints() {
      await this.run(async () => { this.renderHints((await api("GET", this.path("/hints"))).hints); });
    }

    renderHints(hints) {
      this.hints = hints;
      const list = this.card.querySelector(".hints");
      list.replaceChildren();
      hints.forEach((hint, index) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = labToHex(hint.a, hint.b);
        const label = document.createElement("span");
        label.textContent = `${hint.x.toFixed(2)}, ${hint.y.toFixed(2)}`;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.title = "Remove this hint";
        remove.addEventListener("click", () => this.run(async () => {
          const rest = this.hints.filter((_, i) => i !== index);
          this.renderHints((await api("PUT", this.path("/hints"), rest)).hints);
        }));
        item.append(swatch, label, remove);
        list.append(item);
      });
    }

    update(info) {
      this.info = info;
      const q = (selector) => this.card.querySelector(selector);
      q(".state").textContent = info.state + (info.error ? ": " + info.error : "");
      const fps = info.fps_out ?? 0;
      q(".fps").textContent = fps.toFixed(1) + " fps";
      const p50 = info.latency_ms_p50, p95 = info.latency_ms_p95;
      q(".latency").textContent = p50 == null ? "– ms" : `${Math.round(p50)} / ${Math.round(p95 ?? p50)} ms`;
      q(".drops").textContent = (info.drops ?? 0) + " drops";
      q(".viewers").textContent = (info.viewers ?? 0) + " viewers";
    }

    onMetadata(data) {
      let event;
      try { event = JSON.parse(data); } catch (_) { return; }
      if (event.card) {  // the server keeps the picture going while the input is down
        this.card.querySelector(".state").textContent = event.card;
        this.card.querySelector(".fps").textContent = "0.0 fps";
        return;
      }
      this.metadata = event;
      this.metadataCount += 1;
      if (typeof event.rtp_time === "number") {
        this.metadataByRtp.set(event.rtp_time, event);
        if (this.metadataByRtp.size > RTP_KEEP) {
          this.metadataByRtp.delete(this.metadataByRtp.keys().next().value);
        }
      }
      const now = performance.now();
      this.arrivals.push(now);
      while (this.arrivals.length && now - this.arrivals[0] > 2000) this.arrivals.shift();
      const fps = this.arrivals.length > 1 ? (this.arrivals.length - 1) / ((now - this.arrivals[0]) / 1000) : 0;
      this.card.querySelector(".fps").textContent = fps.toFixed(1) + " fps";
      const latency = event.latency_ms ?? (event.colorizer && event.colorizer.latency_ms);
      if (typeof latency === "number") {
        const p95 = this.info && this.info.latency_ms_p95;
        this.card.querySelector(".latency").textContent =
          Math.round(latency) + " ms" + (p95 != null ? ` (p95 ${Math.round(p95)})` : "");
      }
      this.showVerdict(event.deepfake);
    }

    // The deepfake badge: the label, the calibrated probability and, on hover, what they mean.
    showVerdict(verdict) {
      const badge = this.card.querySelector(".deepfake");
      const label = verdict == null ? "off" : (typeof verdict === "string" ? verdict : verdict.label || "off");
      const p = verdict && typeof verdict.probability === "number" ? verdict.probability : null;
      badge.dataset.label = label;
      badge.textContent = "deepfake: " + label.replace("_", " ") + (p == null ? "" : ` ${Math.round(p * 100)}%`);
      const faces = verdict && Array.isArray(verdict.faces) ? verdict.faces.length : 0;
      badge.title = VERDICT_MEANING[label] || VERDICT_MEANING.off;
      if (p != null) {
        badge.title += `\n${Math.round(p * 100)}% = calibrated chance that the most suspicious face ` +
          `(${faces} tracked) is synthetic, from the grey input frames.`;
      }
    }

    // Record the RTP timestamp of every picture shown, so a test (or a person) can check that the
    // metadata belongs to the frames on screen: both differ from the sender's clock by one offset.
    watchFrames() {
      if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
      const step = (_now, meta) => {
        if (meta && typeof meta.rtpTimestamp === "number") {
          this.frameRtp.push(meta.rtpTimestamp);
          if (this.frameRtp.length > RTP_KEEP) this.frameRtp.shift();
        }
        if (!this.closed) this.video.requestVideoFrameCallback(step);
      };
      this.video.requestVideoFrameCallback(step);
    }

    async connect() {
      if (this.closed) return;
      this.teardown();
      this.overlay.hidden = false;
      const pc = new RTCPeerConnection({ iceServers: [] });
      this.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });
      const channel = pc.createDataChannel("metadata");
      channel.onmessage = (event) => this.onMetadata(event.data);
      pc.ontrack = (event) => {
        this.video.srcObject = event.streams[0] || new MediaStream([event.track]);
        this.video.play().catch(() => {});
      };
      pc.onconnectionstatechange = () => {
        if (pc !== this.pc) return;
        if (pc.connectionState === "connected") {
          this.overlay.hidden = true;
          this.retryMs = RECONNECT_MIN_MS;
        } else if (["failed", "closed", "disconnected"].includes(pc.connectionState)) {
          this.scheduleReconnect();
        }
      };
      try {
        await pc.setLocalDescription(await pc.createOffer());
        await waitForIce(pc);
        const response = await fetch("/whep/" + encodeURIComponent(this.id), {
          method: "POST",
          headers: { "Content-Type": "application/sdp" },
          body: pc.localDescription.sdp,
        });
        if (response.status !== 201) {
          let message = response.status + "";
          try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
          throw new Error(message);
        }
        const location = response.headers.get("Location");
        this.location = location ? new URL(location, window.location.href).pathname : null;
        await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
        this.showError("");
      } catch (error) {
        if (pc === this.pc) {
          this.showError("viewer: " + error.message);
          this.scheduleReconnect();
        }
      }
    }

    scheduleReconnect() {
      if (this.closed || this.retryTimer) return;
      this.overlay.hidden = false;
      const delay = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
      this.retryTimer = setTimeout(() => { this.retryTimer = null; this.connect(); }, delay);
    }

    teardown() {
      if (this.location) {
        fetch(this.location, { method: "DELETE", keepalive: true }).catch(() => {});
        this.location = null;
      }
      if (this.pc) {
        const pc = this.pc;
        this.pc = null;
        pc.close();
      }
    }

    close() {
      this.closed = true;
      clearTimeout(this.retryTimer);
      this.teardown();
      this.card.remove();
    }

    async framesDecoded() {
      if (!this.pc) return 0;
      let frames = 0;
      (await this.pc.getStats()).forEach((report) => {
        if (report.type === "inbound-rtp" && report.kind === "video") frames = report.framesDecoded || 0;
      });
      return frames;
    }

    sampleColour(x, y, radius) {
      const w = this.video.videoWidth, h = this.video.videoHeight;
      if (!w || !h) return null;
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      const context = canvas.getContext("2d", { willReadFrequently: true });
      context.drawImage(this.video, 0, 0, w, h);
      const r = Math.max(0, Math.round(radius || 0));
      const cx = Math.round(x * (w - 1)), cy = Math.round(y * (h - 1));
      const x0 = Math.max(0, cx - r), y0 = Math.max(0, cy - r);
      const data = context.getImageData(x0, y0, Math.min(w - x0, 2 * r + 1), Math.min(h - y0, 2 * r + 1)).data;
      const sum = [0, 0, 0];
      for (let i = 0; i < data.length; i += 4) { sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; }
      const n = data.length / 4;
      return sum.map((s) => s / n);
    }
  }

  let refreshing = false;
  async function refresh() {
    if (refreshing) return;
    refreshing = true;
    try {
      const data = await api("GET", "/api/streams");
      const seen = new Set();
      for (const info of data.streams) {
        seen.add(info.id);
        const viewer = viewers.get(info.id);
        if (viewer) viewer.update(info);
        else {
          const created = new Viewer(info);
          viewers.set(info.id, created);
          grid.append(created.card);
        }
      }
      for (const [id, viewer] of viewers) {
        if (!seen.has(id)) { viewer.close(); viewers.delete(id); }
      }
      document.getElementById("empty").hidden = viewers.size > 0;
      statusLine.textContent = `${viewers.size} stream${viewers.size === 1 ? "" : "s"}`;
    } catch (error) {
      statusLine.textContent = "server: " + error.message;
    } finally {
      refreshing = false;
    }
  }

  document.getElementById("add-stream").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    try {
      await api("POST", "/api/streams", { id: form.elements.id.value, url: form.elements.url.value });
      form.reset();
      refresh();
    } catch (error) {
      statusLine.textContent = "add stream: " + error.message;
    }
  });

  window.addEventListener("pagehide", () => { for (const viewer of viewers.values()) viewer.teardown(); });

  // Hooks for automated checks (and the browser console).
  window.chromastream = {
    streams: () => [...viewers.keys()],
    framesDecoded: (id) => (viewers.has(id) ? viewers.get(id).framesDecoded() : Promise.resolve(0)),
    lastMetadata: (id) => (viewers.has(id) ? viewers.get(id).metadata : null),
    metadataCount: (id) => (viewers.has(id) ? viewers.get(id).metadataCount : 0),
    metadataRtpTimes: (id) => (viewers.has(id) ? [...viewers.get(id).metadataByRtp.keys()] : []),
    frameRtpTimes: (id) => (viewers.has(id) ? viewers.get(id).frameRtp.slice() : []),
    videoSize: (id) => {
      const v = viewers.get(id);
      return v ? [v.video.videoWidth, v.video.videoHeight] : [0, 0];
    },
    sampleColour: (id, x, y, radius) => (viewers.has(id) ? viewers.get(id).sampleColour(x, y, radius) : null),
    hints: (id) => (viewers.has(id) ? viewers.get(id).hints || [] : []),
    refresh,
  };

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
