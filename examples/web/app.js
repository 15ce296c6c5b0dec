// The page: sends the prompt to the worker, streams the pieces into the page.
// URL parameters (for scripted runs): ?model=/model/&prompt=...&auto=1&raw=1&maxNewTokens=N&temperature=T
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const worker = new Worker("./worker.js", { type: "module" });
let current = null;

function setStatus(text) {
  $("status").textContent = text;
}

worker.onmessage = ({ data }) => {
  if (data.type === "status") setStatus(data.stage);
  else if (data.type === "ready") {
    setStatus(`ready: ${data.model} (${data.quantization}), ${data.threads} wasm thread(s), loaded in ${data.seconds.toFixed(1)} s`);
    $("send").disabled = false;
    if (params.get("auto")) send();
  } else if (data.type === "piece") current.textContent += data.text;
  else if (data.type === "done") {
    const t = data.result.timings;
    setStatus(`${data.result.tokens.length} tokens, ${t.decodeTps.toFixed(1)} tok/s decode, ` +
      `${t.prefillTps.toFixed(0)} tok/s prefill (${data.result.finishReason})`);
    window.qwenEdgeResult = data.result;
    document.title = "done";
    $("send").disabled = false;
  } else if (data.type === "bench") {
    window.qwenEdgeBench = data.result;
  } else if (data.type === "error") {
    setStatus(`error: ${data.message}`);
    window.qwenEdgeError = data.message;
    document.title = "error";
  }
};

function send() {
  const prompt = $("prompt").value;
  if (!prompt) return;
  const you = document.createElement("div");
  you.className = "you";
  you.textContent = prompt;
  current = document.createElement("div");
  current.className = "model";
  $("log").append(you, current);
  $("send").disabled = true;
  const temperature = params.has("temperature") ? Number(params.get("temperature")) : undefined;
  worker.postMessage({ type: "generate", prompt, raw: params.has("raw"), temperature,
    maxNewTokens: Number(params.get("maxNewTokens") || 256) });
}

$("send").onclick = send;
window.qwenEdgeWorker = worker; // for scripted benchmarks
$("prompt").value = params.get("prompt") || "Write a Python function that checks whether a number is prime.";
const url = new URL(params.get("model") || "/model/", location.href).href;
worker.postMessage({ type: "load", url, maxLength: params.has("maxLength") ? Number(params.get("maxLength")) : undefined });
