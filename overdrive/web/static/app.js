// The overdrive viewer page: fragmented MP4 from the gateway's WebSocket into Media Source Extensions, kept at the
// live edge. Every text that came over the network is put in the page with textContent, never as markup.
//
// Latency (window.overdriveStats.latency_ms_*) is capture-to-shown: a picture's capture time is the stream's
// epoch plus its media time, its display time comes from requestVideoFrameCallback. Capture times are on the
// streamer's clock; the page corrects its own clock by the gateway's ("clock" lines), so the figure assumes the
// streamer's and the gateway's clocks agree (one machine, or NTP on the LAN).
"use strict";

const KIND_VIDEO = 0, KIND_AUDIO = 1, KIND_VIDEO_INIT = 2, KIND_AUDIO_INIT = 3;
const CLOSE_ROTATED = 4001;
const LIVE_MARGIN = 0.05;   // seconds behind the newest buffered picture we aim to play
const CATCH_UP = 0.3;       // further behind than this: play faster
const JUMP = 1.0;           // further behind than this (or outside the newest range): jump to the live edge
const KEEP = 4;             // seconds of buffer kept behind the live edge
const MAX_PENDING = 300;    // fragments waiting for a busy SourceBuffer before they are dropped
const SAMPLES = 300;        // latency samples kept for the percentiles

const $ = (id) => document.getElementById(id);
const video = $("video");
const stats = {
  frames: 0, latency_ms_p50: null, latency_ms_p99: null, latency_ms_last: null, behind_s: 0,
  jumps: 0, skips: 0, dropped_frames: 0, bytes: 0, state: "connecting", codec: null, audio: false,
  first_frame_ms: null,
};
window.overdriveStats = stats;

let player = null;        // {ms, buffers: [video, audio|null], pending: [[], []], epochMs, started}
let clockOffsets = [];    // gateway clock minus ours, newest last (the largest had the least network delay)
let latencies = [];
let lastPresented = 0;
let chatEnabled = false;
const loadedAt = performance.now();

function setStatus(text) { $("status").textContent = text; }
function clockOffset() { return clockOffsets.length ? Math.max(...clockOffsets) : 0; }

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  window.overdriveSocket = ws;
  ws.onopen = () => {
    if (player === null) { stats.state = "waiting"; setStatus("waiting for the stream…"); }
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") control(JSON.parse(ev.data));
    else media(ev.data);
  };
  ws.onclose = (ev) => {
    if (ev.code === CLOSE_ROTATED) {
      stats.state = "expired";
      setStatus("This invite link has been replaced: ask for the new one.");
      return;
    }
    stats.state = "reconnecting";
    setStatus("connection lost, reconnecting…");
    setTimeout(connect, 2000);
  };
}

// Tells the gateway this page's chat name (on connecting and on each change): the streamer counts it present.
function sendName() {
  const ws = window.overdriveSocket;
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "name", name: $("chatname").value.trim() || "guest" }));
  }
}

function control(msg) {
  switch (msg.type) {
    case "hello":
      chatEnabled = Boolean(msg.chat);
      $("chat").hidden = !chatEnabled;
      $("title").textContent = msg.name;
      if (chatEnabled) sendName();
      break;
    case "start": start(msg); break;
    case "clock":
      clockOffsets.push(msg.server_ms - Date.now());
      if (clockOffsets.length > 10) clockOffsets.shift();
      break;
    case "end":
      stats.state = "ended";
      setStatus("The stream ended; waiting for it to start again…");
      break;
    case "skip": stats.skips += 1; break;
    case "chat": case "notice": showChat(msg); break;
  }
}

function start(msg) {
  stop();
  stats.codec = msg.video.codec;
  $("title").textContent = msg.name;
  document.title = msg.name + " · overdrive";
  const videoType = `video/mp4; codecs="${msg.video.codec}"`;
  if (!window.MediaSource || !MediaSource.isTypeSupported(videoType)) {
    stats.state = "unsupported";
    setStatus("This browser cannot play this stream (" + msg.video.codec + ").");
    return;
  }
  const audioType = 'audio/mp4; codecs="opus"';
  const withAudio = Boolean(msg.audio) && MediaSource.isTypeSupported(audioType);
  stats.audio = withAudio;
  $("unmute").hidden = !withAudio || !video.muted;
  const ms = new MediaSource();
  player = { ms, buffers: [null, null], pending: [[], []], epochMs: msg.epoch_ms, started: false };
  const mine = player;
  video.src = URL.createObjectURL(ms);
  ms.addEventListener("sourceopen", () => {
    if (player !== mine) return;
    URL.revokeObjectURL(video.src);
    ms.duration = Infinity;  // a live stream: Chromium then renders video with low delay
    mine.buffers[0] = ms.addSourceBuffer(videoType);
    if (withAudio) mine.buffers[1] = ms.addSourceBuffer(audioType);
    for (const [track, buffer] of mine.buffers.entries()) {
      if (buffer) buffer.addEventListener("updateend", () => { if (player === mine) { pump(track); begin(); } });
    }
    pump(0); pump(1);
  }, { once: true });
  stats.state = "starting";
  setStatus("starting…");
}

function stop() {
  if (player === null) return;
  player = null;
  video.removeAttribute("src");
  video.load();
}

function media(data) {
  stats.bytes += data.byteLength;
  if (player === null) return;
  const kind = new Uint8Array(data, 0, 1)[0];
  const track = (kind === KIND_VIDEO || kind === KIND_VIDEO_INIT) ? 0 : 1;
  if (track === 1 && !stats.audio) return;
  const pending = player.pending[track];
  if (pending.length >= MAX_PENDING) pending.length = 0;  // the gateway restarts us at a keyframe soon after
  pending.push(new Uint8Array(data, 1));
  pump(track);
}

function pump(track) {
  const buffer = player && player.buffers[track];
  if (!buffer || buffer.updating || player.ms.readyState !== "open") return;
  const pending = player.pending[track];
  if (trim(buffer)) return;
  if (pending.length === 0) return;
  try {
    buffer.appendBuffer(pending.shift());
  } catch (err) {
    if (err.name === "QuotaExceededError") {
      pending.length = 0;
      trim(buffer, true);
    } else {
      console.warn("append failed", err);
    }
  }
}

// Remove what is more than KEEP seconds behind the live edge (everything but the last second when forced).
function trim(buffer, force) {
  const ranges = buffer.buffered;
  if (ranges.length === 0) return false;
  const end = ranges.end(ranges.length - 1);
  const keep = force ? 1 : KEEP;
  if (ranges.start(0) >= end - keep - 2) return false;
  buffer.remove(0, end - keep);
  return true;
}

function liveRange() {
  const ranges = video.buffered;
  if (ranges.length === 0) return null;
  return [ranges.start(ranges.length - 1), ranges.end(ranges.length - 1)];
}

function jump() {
  const live = liveRange();
  if (live === null) return;
  video.currentTime = Math.max(live[0], live[1] - LIVE_MARGIN);
  video.playbackRate = 1;
  stats.jumps += 1;
}

// The first picture: jump to the live edge before play() (playing from the start of the cached group would
// begin up to a keyframe interval behind).
function begin() {
  if (player === null || player.started || liveRange() === null) return;
  player.started = true;
  jump();
  play();
}

function play() {
  video.play().then(() => {
    stats.state = "playing";
    setStatus("");
  }, (err) => { console.warn("play failed", err); });
}

// Every 100 ms (every second in a background tab): stay near the live edge.
function keepLive() {
  if (player === null || !player.started) return;
  const live = liveRange();
  if (live === null) return;
  const behind = live[1] - video.currentTime;
  stats.behind_s = behind;
  if (document.hidden) return;  // jumps when shown again
  if (video.currentTime < live[0] || behind > JUMP) jump();
  else if (behind > CATCH_UP) video.playbackRate = 1.5;
  else if (behind < LIVE_MARGIN * 2) video.playbackRate = 1;
  if (video.paused && stats.state === "playing") play();
  const quality = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  if (quality) stats.dropped_frames = quality.droppedVideoFrames;
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

function onFrame(now, meta) {
  video.requestVideoFrameCallback(onFrame);
  if (player === null || stats.state !== "playing") return;  // pictures before play() are not live yet
  const presented = meta.presentedFrames;
  stats.frames += presented > lastPresented ? presented - lastPresented : 1;
  lastPresented = presented;
  if (stats.first_frame_ms === null) stats.first_frame_ms = Math.round(now - loadedAt);
  const shownAt = performance.timeOrigin + meta.expectedDisplayTime + clockOffset();
  const latency = shownAt - (player.epochMs + meta.mediaTime * 1000);
  stats.latency_ms_last = Math.round(latency);
  latencies.push(latency);
  if (latencies.length > SAMPLES) latencies.shift();
}

function updatePercentiles() {
  const sorted = latencies.slice().sort((a, b) => a - b);
  const p50 = percentile(sorted, 0.5), p99 = percentile(sorted, 0.99);
  stats.latency_ms_p50 = p50 === null ? null : Math.round(p50);
  stats.latency_ms_p99 = p99 === null ? null : Math.round(p99);
}

function showChat(msg) {
  const item = document.createElement("li");
  if (msg.type === "notice" || msg.kind !== "chat") item.className = "notice";
  if (msg.name) {
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = String(msg.name);
    item.append(name);
  }
  item.append(document.createTextNode(String(msg.text)));
  const log = $("chatlog");
  log.append(item);
  while (log.children.length > 200) log.firstElementChild.remove();
  log.scrollTop = log.scrollHeight;
}

function setupControls() {
  $("unmute").addEventListener("click", () => {
    video.muted = false;
    $("unmute").hidden = true;
    play();
  });
  $("fullscreen").addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else $("stage").requestFullscreen().catch(() => video.requestFullscreen());
  });
  $("fit").addEventListener("click", () => {
    const actual = $("screen").classList.toggle("actual");
    $("fit").textContent = actual ? "fit to screen" : "actual size";
  });
  $("chatform").addEventListener("submit", (ev) => ev.preventDefault());
  $("chattext").addEventListener("keydown", (ev) => {
    if (ev.key !== "Enter") return;
    ev.preventDefault();
    const text = $("chattext").value.trim();
    const ws = window.overdriveSocket;
    if (!text || !chatEnabled || !ws || ws.readyState !== WebSocket.OPEN) return;
    ws.send(JSON.stringify({ type: "say", name: $("chatname").value.trim() || "guest", text }));
    $("chattext").value = "";
  });
  $("hand").addEventListener("click", () => {
    const ws = window.overdriveSocket;
    if (!chatEnabled || !ws || ws.readyState !== WebSocket.OPEN) return;
    const up = $("hand").getAttribute("aria-pressed") !== "true";
    ws.send(JSON.stringify({ type: "hand", name: $("chatname").value.trim() || "guest", up }));
    $("hand").setAttribute("aria-pressed", String(up));
    $("hand").textContent = up ? "lower hand" : "raise hand";
  });
  $("chatname").value = localStorage.getItem("overdrive-name") || "";
  $("chatname").addEventListener("change", () => {
    localStorage.setItem("overdrive-name", $("chatname").value);
    if (chatEnabled) sendName();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && player !== null && player.started) { jump(); play(); }
  });
}

setupControls();
if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) video.requestVideoFrameCallback(onFrame);
setInterval(keepLive, 100);
setInterval(updatePercentiles, 500);
connect();
