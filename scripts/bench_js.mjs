// Decode / prefill tokens per second and peak memory of one artifact in Node (onnxruntime-node, in-place
// cache) and in headless Chromium (onnxruntime-web wasm, 2 threads, growing cache), on the given prompt ids.
// Run by scripts/bench_platforms.py, which adds Python and prints the table.
//   node scripts/bench_js.mjs FOLDER IDS.json NEW_TOKENS RUNS [node,chromium]
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const [folder, idsFile, newTokens, runs, which = "node,chromium"] = process.argv.slice(2);
const ids = JSON.parse(fs.readFileSync(idsFile, "utf8"));
const N = Number(newTokens);
const R = Number(runs);
const maxLength = Math.min(1024, JSON.parse(fs.readFileSync(path.join(folder, "qwen_edge.json"), "utf8")).max_length);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const summary = (rs) => ({ prefill_tps: median(rs.map((r) => r.timings.prefillTps)),
  decode_tps: median(rs.map((r) => r.timings.decodeTps)), ttft_ms: median(rs.map((r) => r.timings.ttftS * 1000)) });

async function node() {
  const { loadModel } = await import(path.join(root, "js", "src", "node.js"));
  const m = await loadModel(folder, { threads: 2, verify: false, maxLength });
  await m.complete(ids.slice(0, 16), { maxNewTokens: 4, temperature: 0 }); // warm-up
  const rs = [];
  for (let i = 0; i < R; i++) rs.push(await m.complete(ids, { maxNewTokens: N, temperature: 0, ignoreEos: true }));
  return { ...summary(rs), peak_rss_mib: process.resourceUsage().maxRSS / 1024 };
}

function chromeRssMib() { // the browser's processes together (renderer, GPU, network ...)
  let kb = 0;
  for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmd.includes("chromium")) continue;
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
      if (m) kb += Number(m[1]);
    } catch { /* gone */ }
  }
  return kb / 1024;
}

async function chromium() {
  const { chromium: pw } = await import(path.join(root, "js", "node_modules", "playwright-core", "index.mjs"));
  const srv = spawn(process.execPath, [path.join(root, "examples", "web", "serve.mjs"), "--model", folder, "--port", "0"]);
  const { url } = JSON.parse(String(await new Promise((ok) => srv.stdout.once("data", ok))));
  const browser = await pw.launch({ executablePath: "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  let peak = 0;
  const timer = setInterval(() => { peak = Math.max(peak, chromeRssMib()); }, 100);
  try {
    const page = await browser.newPage();
    await page.goto(`${url}?model=/model/&maxLength=${maxLength}`);
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("ready"), null, { timeout: 600_000 });
    const rs = [];
    for (let i = 0; i <= R; i++) { // the first run warms up
      await page.evaluate(([ids, n]) => { window.qwenEdgeBench = null; window.qwenEdgeWorker.postMessage({ type: "bench", ids, newTokens: n }); }, [ids, N]);
      await page.waitForFunction(() => window.qwenEdgeBench, null, { timeout: 600_000 });
      if (i) rs.push(await page.evaluate(() => window.qwenEdgeBench));
    }
    return { ...summary(rs), peak_rss_mib: peak };
  } finally {
    clearInterval(timer);
    await browser.close();
    srv.kill();
  }
}

const want = which.split(",");
console.log(JSON.stringify({ node: want.includes("node") ? await node() : null,
  chromium: want.includes("chromium") ? await chromium() : null }));
