// The Bus console's script: generated forms (collect, check, submit), live workers,
// dead-letter actions and the config check. No build step, no framework.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function post(url, body, isForm) {
  const headers = {"X-CSRF-Token": csrf()};
  if (!isForm) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {method: "POST", headers, credentials: "same-origin",
                                     body: isForm ? body : JSON.stringify(body)});
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: `HTTP ${response.status}`}; }
  return {ok: response.ok, status: response.status, data};
}

function show(output, text, good) {
  output.textContent = text;
  output.className = "outcome " + (good === null ? "pending" : good ? "good" : "bad");
}

// -- forms generated from JSON Schemas -------------------------------------------------

function fieldValue(input, problems) {
  const raw = input.value;
  const kind = input.dataset.kind;
  const path = input.dataset.path;
  if (raw === "") {
    if (input.hasAttribute("data-required")) problems.push(`${path}: required`);
    return undefined;
  }
  switch (kind) {
    case "integer":
    case "number": {
      const value = Number(raw);
      if (!Number.isFinite(value) || (kind === "integer" && !Number.isInteger(value))) {
        problems.push(`${path}: not ${kind === "integer" ? "an integer" : "a number"}`);
        return undefined;
      }
      if (input.min !== "" && value < Number(input.min)) problems.push(`${path}: below ${input.min}`);
      if (input.max !== "" && value > Number(input.max)) problems.push(`${path}: above ${input.max}`);
      return value;
    }
    case "boolean": return raw === "true";
    case "enum":
    case "json":
      try { return JSON.parse(raw); } catch (e) {
        problems.push(`${path}: not valid JSON (${e.message})`);
        return undefined;
      }
    case "datetime": return new Date(raw).toISOString();
    case "text":
      if (input.minLength > 0 && raw.length < input.minLength) problems.push(`${path}: shorter than ${input.minLength}`);
      if (input.pattern && !new RegExp(`^(?:${input.pattern})$`, "u").test(raw)) problems.push(`${path}: does not match ${input.pattern}`);
      return raw;
    default: return raw;
  }
}

function collect(container, problems) {
  const out = {};
  for (const child of container.querySelectorAll(":scope > [data-path], :scope > label > [data-path]")) {
    const name = child.dataset.path.split(".").pop();
    const value = child.dataset.kind === "object" ? collect(child, problems) : fieldValue(child, problems);
    if (value !== undefined && !(child.dataset.kind === "object" && Object.keys(value).length === 0 && !child.hasAttribute("data-required"))) {
      out[name] = value;
    }
  }
  return out;
}

for (const form of document.querySelectorAll("form.bus-form")) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const output = form.querySelector("output.outcome");
    const problems = [];
    const kwargs = collect(form, problems);
    if (problems.length) { show(output, "Check: " + problems.join("; "), false); return; }
    show(output, "…", null);
    const {ok, data} = await post(form.dataset.action, {kwargs});
    if (!ok) { show(output, data.error || "failed", false); return; }
    show(output, form.dataset.kind === "rpc" ? "Result: " + JSON.stringify(data.result)
                                             : `Fired (id ${data.id}, native id ${data.native_id})`, true);
  });
}

// -- live workers ----------------------------------------------------------------------

const workers = document.querySelector("#workers[data-refresh]");
if (workers) {
  const cell = (text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; };
  const refresh = async () => {
    try {
      const response = await fetch(workers.dataset.refresh, {credentials: "same-origin"});
      if (!response.ok) return;
      const rows = (await response.json()).workers;
      const body = workers.tBodies[0];
      body.replaceChildren();
      if (!rows.length) {
        const tr = document.createElement("tr"); tr.className = "empty";
        const td = cell("no worker announced itself recently"); td.colSpan = 8; tr.append(td); body.append(tr);
      }
      for (const w of rows) {
        const tr = document.createElement("tr");
        tr.dataset.process = w.process_name; tr.dataset.status = w.status;
        tr.append(cell(w.service_name), cell(w.process_name), cell(w.hostname || "-"), cell(w.pid ?? "-"),
                  cell((w.api_names || []).join(", ") || "-"), cell(w.status, "status " + w.status),
                  cell(w.uptime != null ? `${Math.round(w.uptime)}s` : "-"),
                  cell(w.memory_use ? `${Math.floor(w.memory_use / 1048576)} MiB` : "-"));
        body.append(tr);
      }
    } catch (e) { /* the next poll tries again */ }
  };
  setInterval(refresh, 1000);
}

// -- dead letters ----------------------------------------------------------------------

for (const button of document.querySelectorAll("button.letter-action")) {
  button.addEventListener("click", async () => {
    const {action, id, api, event} = button.dataset;
    if (action === "purge" && !window.confirm(`Purge dead letter ${id} for good?`)) return;
    const output = button.parentElement.querySelector("output.outcome");
    const {ok, data} = await post(`/api/dead-letters/${action}`, {ids: [id], api, event});
    if (!ok) { show(output, data.error || "failed", false); return; }
    const outcome = data.outcomes[0];
    if (outcome.error) show(output, outcome.error, false);
    else if (!outcome.done) show(output, "already replayed or purged", false);
    else show(output, action === "replay" ? `replayed as entry ${outcome.new_id}` : "purged", true);
    if (outcome.done) button.closest("tr").querySelectorAll("button").forEach((b) => { b.disabled = true; });
  });
}

// -- config check ----------------------------------------------------------------------

const configForm = document.querySelector("#config-form");
if (configForm) {
  configForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const verdict = document.querySelector("#config-verdict");
    verdict.textContent = "checking…";
    const {ok, data} = await post("/api/config/check", new FormData(configForm), true);
    verdict.replaceChildren();
    const head = document.createElement("p");
    const pre = document.createElement("pre");
    if (!ok) { head.textContent = data.error || "failed"; head.className = "error"; verdict.append(head); return; }
    head.textContent = data.valid ? "Valid" : "Invalid";
    head.className = data.valid ? "good" : "error";
    pre.textContent = data.output;
    verdict.append(head, pre);
  });
}
