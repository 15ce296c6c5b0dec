// llama.cpp in the browser, the peer of our web path: @wllama/wllama (llama.cpp compiled to wasm, its wasm
// inside the npm package, no network) runs a GGUF in headless Chromium with 2 threads under cross-origin
// isolation, on the same prompt as scripts/bench_js.mjs (as text: wllama's completion API takes no token ids;
// the prompt's token count is reported). Prefill and decode tokens/s are llama.cpp's own timings (the server
// context's prompt_per_second / predicted_per_second), medians over RUNS after a warm-up.
//   node scripts/bench_wllama.mjs MODEL.gguf PROMPT.txt NEW_TOKENS RUNS      (prints one JSON line)
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const [gguf, promptFile, newTokens, runs] = process.argv.slice(2);
if (!gguf || !fs.existsSync(gguf)) {
  console.error("error: usage: node scripts/bench_wllama.mjs MODEL.gguf PROMPT.txt NEW_TOKENS RUNS");
  process.exit(2);
}
const prompt = fs.readFileSync(promptFile, "utf8");
const pkg = path.join(root, "js", "node_modules", "@wllama", "wllama", "esm");
const PAGE = `<!doctype html><meta charset="utf-8"><title>wllama bench</title><script type="module">
import { Wllama } from "/wllama/index.js";
window.runBench = async (prompt, n, runs) => {
  const w = new Wllama({ default: "/wllama/wasm/wllama.wasm" }, { suppressNativeLog: !window.wllamaLogs });
  const t0 = performance.now();
  await w.loadModelFromUrl(location.origin + "/model.gguf", { n_threads: 2, n_ctx: 1024, n_batch: 512, useCache: false });
  const loadS = (performance.now() - t0) / 1000;
  const out = [];
  for (let i = 0; i <= runs; i++) {  // the first run warms up
    const r = await w.createCompletion({ prompt, max_tokens: n, temperature: 0, ignore_eos: true, cache_prompt: false });
    if (i) out.push(r.timings || null);
  }
  return { loadS, timings: out, threads: crossOriginIsolated ? 2 : 1 };
};
document.title = "ready";
</script>`;

const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin" };
  let file = null;
  let type = "application/octet-stream";
  if (url === "/") { res.writeHead(200, { ...headers, "Content-Type": "text/html" }).end(PAGE); return; }
  if (url === "/model.gguf") file = gguf;
  else if (url.startsWith("/wllama/")) file = path.join(pkg, url.slice(8));
  if (file && file.endsWith(".js")) type = "text/javascript";
  if (file && file.endsWith(".wasm")) type = "application/wasm";
  if (!file || !path.resolve(file).startsWith(url === "/model.gguf" ? path.resolve(gguf) : pkg) || !fs.existsSync(file)) {
    res.writeHead(404, headers).end("not found");
    return;
  }
  const size = fs.statSync(file).size;
  const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range || "");
  if (range) {  // wllama reads large files in ranged parallel chunks
    const a = Number(range[1]);
    const b = range[2] ? Number(range[2]) : size - 1;
    res.writeHead(206, { ...headers, "Content-Type": type, "Content-Length": b - a + 1, "Accept-Ranges": "bytes",
      "Content-Range": `bytes ${a}-${b}/${size}` });
    fs.createReadStream(file, { start: a, end: b }).pipe(res);
    return;
  }
  res.writeHead(200, { ...headers, "Content-Type": type, "Content-Length": size, "Accept-Ranges": "bytes" });
  if (req.method === "HEAD") res.end(); else fs.createReadStream(file).pipe(res);
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const url = `http://127.0.0.1:${server.address().port}/`;

function chromeRssMib() { // the browser's processes together, as bench_js.mjs counts them
  let kb = 0;
  for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("chromium")) continue;
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
      if (m) kb += Number(m[1]);
    } catch { /* gone */ }
  }
  return kb / 1024;
}

const { chromium } = await import(path.join(root, "js", "node_modules", "playwright-core", "index.mjs"));
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
let peak = 0;
const timer = setInterval(() => { peak = Math.max(peak, chromeRssMib()); }, 100);
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push(String(e)));
  if (process.env.WLLAMA_LOGS) await page.addInitScript(() => { window.wllamaLogs = true; });
  await page.goto(url);
  await page.waitForFunction(() => document.title === "ready", null, { timeout: 60_000 });
  let r;
  try {
    r = await page.evaluate(([i, n, k]) => window.runBench(i, n, k), [prompt, Number(newTokens), Number(runs)]);
  } catch (e) {
    console.error(logs.slice(-20).join("\n"));
    throw e;
  }
  const t = r.timings.filter(Boolean);
  if (!t.length) throw new Error("wllama returned no timings");
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(JSON.stringify({
    prefill_tps: median(t.map((x) => x.prompt_per_second)), decode_tps: median(t.map((x) => x.predicted_per_second)),
    ttft_ms: median(t.map((x) => x.prompt_ms)), prompt_n: t[0].prompt_n, predicted_n: t[0].predicted_n,
    load_s: r.loadS, threads: r.threads, peak_rss_mib: peak,
  }));
} finally {
  clearInterval(timer);
  await browser.close();
  server.close();
}
