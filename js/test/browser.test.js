// The web example in headless Chromium (playwright-core + the system's chromium): the page loads an int4
// artifact with onnxruntime-web (wasm, 2 threads under cross-origin isolation), streams a greedy answer, and
// that answer equals the Python runtime's. A screenshot is saved (QWEN_EDGE_SCREENSHOTS or test/.screenshots).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");
const FIX = process.env.QWEN_EDGE_JS_FIXTURES || path.join(here, ".fixtures");
const SHOTS = process.env.QWEN_EDGE_SCREENSHOTS || path.join(here, ".screenshots");
const chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find((p) => fs.existsSync(p));
const required = !!process.env.QWEN_EDGE_REQUIRE_BROWSER;

async function withServer(model, fn) {
  const srv = spawn(process.execPath, [path.join(root, "examples", "web", "serve.mjs"), "--model", model, "--port", "0"]);
  try {
    const line = await new Promise((ok, fail) => {
      srv.stdout.once("data", (d) => ok(String(d)));
      srv.once("exit", (c) => fail(new Error(`server exited ${c}`)));
    });
    return await fn(JSON.parse(line).url);
  } finally {
    srv.kill();
  }
}

async function runPage(model, prompt, { raw = false, maxNewTokens, shot, timeout = 600_000 }) {
  const { chromium: pw } = await import("playwright-core");
  const browser = await pw.launch({ executablePath: chromium, headless: true,
    args: ["--no-sandbox", "--disable-dev-shm-usage"] });
  try {
    return await withServer(model, async (url) => {
      const page = await browser.newPage({ viewport: { width: 900, height: 700 } });
      const errors = [];
      page.on("pageerror", (e) => errors.push(e.message));
      const q = new URLSearchParams({ model: "/model/", prompt, auto: "1", temperature: "0",
        maxNewTokens: String(maxNewTokens), ...(raw ? { raw: "1" } : {}) });
      await page.goto(`${url}?${q}`);
      await page.waitForFunction(() => document.title === "done" || document.title === "error", null, { timeout });
      const err = await page.evaluate(() => window.qwenEdgeError);
      assert.equal(err, undefined, `the page failed: ${err}`);
      const result = await page.evaluate(() => window.qwenEdgeResult);
      const shown = await page.evaluate(() => document.querySelector(".model").textContent);
      const isolated = await page.evaluate(() => crossOriginIsolated);
      fs.mkdirSync(SHOTS, { recursive: true });
      await page.screenshot({ path: path.join(SHOTS, shot), fullPage: true });
      assert.deepEqual(errors, []);
      return { result, shown, isolated };
    });
  } finally {
    await browser.close();
  }
}

const skip = !chromium ? (required ? false : "no chromium here (apt-get install chromium)") : false;

test("web example, tiny int4 in Chromium: the streamed greedy answer equals Python's", { skip }, async () => {
  assert.ok(chromium, "QWEN_EDGE_REQUIRE_BROWSER is set but no chromium was found");
  const golden = JSON.parse(fs.readFileSync(path.join(FIX, "golden.json"), "utf8"))["qwen3-int4"];
  const g = golden.generate.find((x) => typeof x.prompt === "string" && x.prompt.startsWith("The quick"));
  const { result, shown, isolated } = await runPage(path.join(FIX, "qwen3-int4"), g.prompt,
    { raw: true, maxNewTokens: g.max_new_tokens, shot: "web-tiny-int4.png" });
  assert.ok(isolated, "the page is not cross-origin isolated: wasm threads are off");
  assert.deepEqual(result.tokens, g.tokens);
  assert.equal(result.text, g.text);
  assert.equal(shown, g.text); // what the page shows is what streamed
});

test("web example, tiny fp16 (the browser's recommended file) in Chromium: greedy tokens equal Python's", { skip }, async () => {
  assert.ok(chromium, "QWEN_EDGE_REQUIRE_BROWSER is set but no chromium was found");
  const golden = JSON.parse(fs.readFileSync(path.join(FIX, "golden.json"), "utf8"))["qwen3-fp16"];
  const g = golden.generate.find((x) => typeof x.prompt === "string" && x.prompt.startsWith("The quick"));
  const { result, shown } = await runPage(path.join(FIX, "qwen3-fp16"), g.prompt,
    { raw: true, maxNewTokens: g.max_new_tokens, shot: "web-tiny-fp16.png" });
  assert.deepEqual(result.tokens, g.tokens);
  assert.equal(shown, g.text);
});

test("web example, the real int4 0.5B in Chromium: greedy chat answer equals Python's",
  { skip: skip || (!process.env.QWEN_EDGE_REAL_INT4 && "QWEN_EDGE_REAL_INT4 not set") }, async () => {
    const g = JSON.parse(fs.readFileSync(process.env.QWEN_EDGE_REAL_GOLDEN, "utf8"));
    const { result, shown } = await runPage(process.env.QWEN_EDGE_REAL_INT4, g.messages[0].content,
      { maxNewTokens: 32, shot: "web-real-int4.png" });
    assert.deepEqual(result.tokens, g.tokens.slice(0, result.tokens.length));
    assert.ok(result.tokens.length >= 8, "too short to compare");
    assert.equal(shown, result.text);
  });
