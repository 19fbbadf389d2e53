// strata dashboard: one EventSource on /v1/cluster/events drives every live panel (no polling loop).
"use strict";

const keyInput = document.getElementById("api-key");
keyInput.value = localStorage.getItem("strata-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("strata-api-key", keyInput.value.trim()));

function headers(json) {
  const result = json ? { "Content-Type": "application/json" } : {};
  const key = keyInput.value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

const gibibytes = (bytes) => `${(Number(bytes) / 2 ** 30).toFixed(2)} GiB`;
function size(bytes) {
  const value = Number(bytes);
  const [unit, scale] = value >= 2 ** 30 ? ["GiB", 2 ** 30] : value >= 2 ** 20 ? ["MiB", 2 ** 20] : ["KiB", 2 ** 10];
  return `${(value / scale).toFixed(value >= 100 * scale ? 0 : 1)} ${unit}`;
}

async function errorText(response) {
  try { return (await response.json()).error.message; } catch { return `${response.status} ${response.statusText}`; }
}

let activity = {};

function renderStatus(status) {
  if (!status) return;
  document.getElementById("leader").textContent = `leader ${status.leader || "none"} · term ${status.term} · index ${status.last_index}`;
  const hosts = new Map();
  for (const shard of status.shards) {
    if (!hosts.has(shard.node_id)) hosts.set(shard.node_id, []);
    hosts.get(shard.node_id).push(shard);
  }
  const hostCards = [];
  for (const [nodeId, shards] of hosts) {
    const used = new Map();
    for (const instance of status.instances) for (const stage of instance.stages) used.set(stage.shard_id, instance);
    const card = element("div", { class: "card host", "data-node": nodeId }, element("strong", {}, `node ${nodeId}`));
    const memory = (status.host_memory || []).find((report) => report.node_id === nodeId);
    if (memory) {
      const total = Number(memory.total_bytes);
      const free = Number(memory.free_bytes);
      const usedShare = total ? Math.round((100 * (total - free)) / total) : 0;
      card.append(element("div", { class: "memory-line muted" }, `${gibibytes(total - free)} used · ${gibibytes(free)} free of ${gibibytes(total)}`),
        element("div", { class: "memory", title: `${usedShare}% used` }, element("div", { style: `width:${usedShare}%` })));
    }
    for (const shard of shards) {
      const instance = used.get(shard.shard_id);
      card.append(element("div", { class: "shard", "data-shard": shard.shard_id },
        `shard server ${shard.shard_id} · ${shard.address} · ${shard.device} · ${gibibytes(shard.available_memory_bytes)} offered`,
        element("span", { class: "muted" }, instance ? ` · serves ${instance.model_id}` : " · idle")));
    }
    hostCards.push(card);
  }
  document.getElementById("hosts").replaceChildren(...(hostCards.length ? hostCards : [element("p", { class: "muted" }, "no shard server yet")]));
  renderInstances(status);
}

let lastStatus = null;

function renderInstances(status) {
  lastStatus = status;
  const cards = status.instances.map((instance) => {
    const bar = element("div", { class: "bar" });
    for (const stage of instance.stages) {
      const left = (100 * stage.start_layer) / instance.num_layers;
      const width = (100 * (stage.end_layer - stage.start_layer)) / instance.num_layers;
      bar.append(element("div", {
        class: "stage", "data-status": stage.status, "data-shard": stage.shard_id,
        style: `left:${left}%;width:${width}%`, title: `${stage.shard_id} ${stage.status}`,
      }, `${stage.shard_id} [${stage.start_layer}, ${stage.end_layer})`));
    }
    const live = activity[instance.instance_id] || { requests_in_flight: 0, tokens_per_second: 0, total_tokens: 0 };
    return element("div", { class: "card instance", "data-instance": instance.instance_id },
      element("strong", {}, `${instance.model_id} · ${instance.instance_id}`), ` ${instance.status}`,
      element("div", { class: "muted" }, `${instance.num_layers} layers over ${instance.stages.length} shard(s) in ring order`),
      bar,
      element("div", { class: "activity" }, `${live.tokens_per_second.toFixed(1)} tok/s · ${live.requests_in_flight} in flight · ${live.total_tokens} tokens`),
      instance.message ? element("div", { class: "error" }, instance.message) : "");
  });
  document.getElementById("instances").replaceChildren(...(cards.length ? cards : [element("p", { class: "muted" }, "no instance placed")]));
}

function logEvent(committed) {
  const entry = element("li", { "data-kind": committed.kind, title: JSON.stringify(committed.event) },
    element("span", { class: "muted" }, `#${committed.index} ${new Date().toLocaleTimeString()} `), committed.summary);
  const log = document.getElementById("event-log");
  log.prepend(entry);
  while (log.children.length > 500) log.lastChild.remove();
}

const events = new EventSource("/v1/cluster/events");
events.addEventListener("state", (message) => {
  const document_ = JSON.parse(message.data);
  activity = document_.activity || {};
  renderStatus(document_.status);
});
events.addEventListener("committed", (message) => {
  const committed = JSON.parse(message.data);
  logEvent(committed);
  renderStatus(committed.status);
  if (["model_registered", "model_served", "model_unserved", "instance_ready", "instance_removed"].includes(committed.kind)) loadModels();
});
events.addEventListener("activity", (message) => {
  activity = JSON.parse(message.data);
  if (lastStatus) renderInstances(lastStatus);
});
events.onerror = () => { document.getElementById("leader").textContent = "reconnecting…"; };

// Models: stored and served ones (/v1/cluster/models) with placement preview and serve/unserve, a few
// pullable ones from the Hub, and pulls with their progress (/v1/cluster/pulls, followed while one runs).
const PULLABLE = [
  "HuggingFaceTB/SmolLM2-135M-Instruct",
  "HuggingFaceTB/SmolLM2-360M-Instruct",
  "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
  "mlx-community/Qwen3-0.6B-4bit",
  "mlx-community/Llama-3.2-1B-Instruct-4bit",
];
const modelIdOf = (repository) => repository.split("@")[0].split("/").pop().toLowerCase();

async function loadModels() {
  const errorLine = document.getElementById("models-error");
  const response = await fetch("/v1/cluster/models", { headers: headers(false) });
  if (!response.ok) {
    errorLine.hidden = false;
    errorLine.textContent = response.status === 404 ? "This gateway has no model list (/v1/cluster/models) yet." : await errorText(response);
    return;
  }
  errorLine.hidden = true;
  const listed = (await response.json()).data;
  const cards = listed.map((card) => {
    const preview = element("div", { class: "muted preview" });
    const action = async (path, body) => {
      preview.textContent = `${path}…`;
      const reply = await fetch(`/v1/cluster/models/${card.id}/${path}`, { method: "POST", headers: headers(true), body: JSON.stringify(body) });
      preview.textContent = reply.ok ? `${path}: done` : `${path}: ${await errorText(reply)}`;
      loadModels();
    };
    const previewButton = element("button", { type: "button" }, "Preview");
    previewButton.onclick = async () => {
      const reply = await fetch(`/v1/cluster/models/${card.id}/preview?instances=1`, { headers: headers(false) });
      if (!reply.ok) { preview.textContent = `preview: ${await errorText(reply)}`; return; }
      const plan = await reply.json();
      preview.textContent = plan.fits
        ? plan.stages.map((stage) => `${stage.shard_id} [${stage.start_layer}, ${stage.end_layer}) ${size(stage.memory_bytes)}`).join(" · ")
        : `does not fit: ${plan.reason || size(plan.missing_bytes) + " missing"}`;
    };
    const serveButton = element("button", { type: "button" }, card.served ? "Unserve" : "Serve");
    serveButton.onclick = () => (card.served ? action("unserve", {}) : action("serve", { instances: 1 }));
    const facts = card.card_available
      ? [card.architecture, `${card.num_layers} layers`, size(card.bytes), card.compute_dtype, card.quantization].filter(Boolean).join(" · ")
      : "weights on other hosts";
    return element("div", { class: "card model", "data-model": card.id },
      element("strong", {}, card.id), ` ${card.served ? "served" : "stored"}`,
      element("div", { class: "muted" }, facts),
      element("form", {}, previewButton, serveButton), preview);
  });
  const stored = new Set(listed.map((card) => card.id));
  for (const repository of PULLABLE) {
    if (stored.has(modelIdOf(repository))) continue;
    const pullButton = element("button", { type: "button" }, "Pull");
    pullButton.onclick = () => startPull(repository);
    cards.push(element("div", { class: "card model pullable", "data-repository": repository },
      element("strong", {}, repository), " pullable",
      element("div", { class: "muted" }, "from the Hugging Face Hub"), element("form", {}, pullButton)));
  }
  document.getElementById("models").replaceChildren(...cards);
}

const ACTIVE_PULL_STATES = ["downloading", "importing"];
let followingPulls = false;
let activePulls = new Set();

function pullCard(pull) {
  const done = Number(pull.bytes_done);
  const total = Number(pull.bytes_total);
  const share = pull.state === "done" ? 100 : total ? Math.floor((100 * done) / total) : 0;
  const speed = Number(pull.bytes_per_second);
  const eta = Number(pull.eta_seconds);
  const details = ACTIVE_PULL_STATES.includes(pull.state)
    ? ` · ${size(speed)}/s${eta >= 0 ? ` · ${Math.ceil(eta)} s left` : ""}`
    : "";
  return element("div", { class: "card pull", "data-repository": pull.repository, "data-state": pull.state },
    element("strong", {}, `${pull.repository}@${pull.revision}`), ` → ${pull.model_id} · `,
    element("span", { class: "pull-state" }, pull.state),
    element("div", { class: "muted" }, `${size(done)} of ${size(total)} · ${share}%${details}`),
    element("div", { class: "memory progress" }, element("div", { style: `width:${share}%` })),
    pull.error ? element("div", { class: "error" }, pull.error) : "");
}

async function loadPulls() {
  const response = await fetch("/v1/cluster/pulls", { headers: headers(false) });
  if (!response.ok) return;
  const pulls = (await response.json()).data;
  document.getElementById("pulls").replaceChildren(...pulls.map(pullCard));
  const active = new Set(pulls.filter((pull) => ACTIVE_PULL_STATES.includes(pull.state)).map((pull) => pull.pull_id));
  if ([...activePulls].some((pullId) => !active.has(pullId))) loadModels();  // one ended: its model may be stored now
  activePulls = active;
  // The pulls have no event stream of their own: a pull in progress is followed until it ends.
  if (active.size && !followingPulls) {
    followingPulls = true;
    setTimeout(() => { followingPulls = false; loadPulls(); }, 1000);
  }
}

async function startPull(repository) {
  const errorLine = document.getElementById("models-error");
  const response = await fetch("/v1/cluster/models/pull", { method: "POST", headers: headers(true), body: JSON.stringify({ repository }) });
  errorLine.hidden = response.ok;
  if (!response.ok) errorLine.textContent = `pull ${repository}: ${await errorText(response)}`;
  await loadPulls();
  loadModels();
}

document.getElementById("pull-form").addEventListener("submit", (submitted) => {
  submitted.preventDefault();
  startPull(document.getElementById("pull-repo").value.trim());
});

// Chat: openai-style SSE from /v1/chat/completions; TTFT, tok/s and reasoning_content shown apart.
const conversation = [];
document.getElementById("chat-form").addEventListener("submit", async (submitted) => {
  submitted.preventDefault();
  const input = document.getElementById("chat-input");
  const text = input.value.trim();
  input.value = "";
  const chatLog = document.getElementById("chat-log");
  chatLog.append(element("div", { class: "message user" }, text));
  conversation.push({ role: "user", content: text });
  const model = (lastStatus && lastStatus.instances[0] && lastStatus.instances[0].model_id) || (lastStatus && lastStatus.model_ids[0]);
  const reasoning = element("div", { class: "message reasoning", hidden: "" });
  const answer = element("div", { class: "message assistant" });
  chatLog.append(reasoning, answer);
  const stats = document.getElementById("chat-stats");
  const started = performance.now();
  let firstTokenAt = null;
  let chunks = 0;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(true),
    body: JSON.stringify({ model, messages: conversation, max_tokens: 256, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) { answer.classList.add("error"); answer.textContent = await errorText(response); return; }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let completionTokens = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const lines = buffer.split("\n");
    buffer = lines.pop();
    for (const line of lines) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const chunk = JSON.parse(line.slice(6));
      if (chunk.error) { answer.classList.add("error"); answer.textContent += ` ${chunk.error.message}`; continue; }
      if (chunk.usage) completionTokens = chunk.usage.completion_tokens;
      const delta = (chunk.choices && chunk.choices[0] && chunk.choices[0].delta) || {};
      if (delta.reasoning_content) { reasoning.hidden = false; reasoning.textContent += delta.reasoning_content; }
      if (delta.content) answer.textContent += delta.content;
      if ((delta.content || delta.reasoning_content) && firstTokenAt === null) firstTokenAt = performance.now();
      if (delta.content || delta.reasoning_content) chunks += 1;
      chatLog.scrollTop = chatLog.scrollHeight;
    }
  }
  conversation.push({ role: "assistant", content: answer.textContent });
  const tokens = completionTokens ?? chunks;
  const decodeSeconds = firstTokenAt === null ? 0 : (performance.now() - firstTokenAt) / 1000;
  stats.textContent = firstTokenAt === null ? "no tokens" :
    `TTFT ${Math.round(firstTokenAt - started)} ms · ${tokens} tokens · ${decodeSeconds > 0 ? (tokens / decodeSeconds).toFixed(1) : "–"} tok/s`;
});

loadModels();
loadPulls();
