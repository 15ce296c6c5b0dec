// qwen-edge in the browser (or any fetch-capable runtime): an artifact folder served at a URL,
// onnxruntime-web on the wasm execution provider, and a growing KV cache. No package imports here:
// onnxruntime-web and the tokenizer / template classes are handed in, so a page or a worker can load
// them from any URL without a bundler (browser.js is the entry that imports them for bundlers).

import { GrowingCache, OwnedCache } from "./cache.js";
import { Model } from "./core.js";
import { checkOptions, QwenEdgeError } from "./errors.js";
import { checkModelFields } from "./graph.js";
import { smallOutputGraph } from "./small_outputs.js";

async function get(base, name, kind, fetchFn, optional = false) {
  const url = new URL(name, base).href;
  let r;
  try {
    r = await fetchFn(url);
  } catch (e) {
    throw new QwenEdgeError(`cannot fetch ${url}: ${e.message}`);
  }
  if (!r.ok) {
    if (optional && r.status === 404) return null;
    throw new QwenEdgeError(`cannot fetch ${url}: HTTP ${r.status}`);
  }
  if (kind === "json") {
    try {
      return await r.json();
    } catch {
      throw new QwenEdgeError(`${url} is not valid JSON`);
    }
  }
  return kind === "text" ? r.text() : new Uint8Array(await r.arrayBuffer());
}

async function checkBytes(name, bytes, manifest, verify) {
  const size = (manifest.sizes || {})[name];
  if (size !== undefined && bytes.byteLength !== size) {
    throw new QwenEdgeError(`the model is damaged: ${name} has ${bytes.byteLength} bytes, its manifest says ${size}`);
  }
  if (verify && globalThis.crypto?.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== manifest.files[name]) throw new QwenEdgeError(`the model is damaged: ${name} does not match its manifest (sha256)`);
  }
}

/**
 * Load an artifact folder from a base URL (ending in "/"). deps: { ort, Tokenizer, Template }. Options:
 * threads (wasm threads; needs cross-origin isolation), maxLength, verify (sha256 of the files, with
 * WebCrypto; sizes are always checked), prefillChunk, wasmPaths (where onnxruntime-web's .wasm files are),
 * fetch, onProgress(stage).
 */
export async function loadModelFromUrl(baseUrl, deps, options = {}) {
  let { threads = 1, maxLength, verify = true, prefillChunk, lookup, wasmPaths,
    fetch: fetchFn = globalThis.fetch.bind(globalThis), onProgress = () => {} } = checkOptions(options,
    ["threads", "maxLength", "verify", "prefillChunk", "lookup", "wasmPaths", "fetch", "onProgress"], "loadModel");
  const { ort, Tokenizer, Template } = deps || {};
  if (prefillChunk !== undefined && (!Number.isInteger(prefillChunk) || prefillChunk < 1)) {
    throw new QwenEdgeError(`prefillChunk must be an integer >= 1, got ${prefillChunk}`);
  }
  if (!ort || !Tokenizer || !Template) throw new QwenEdgeError("loadModelFromUrl needs deps { ort, Tokenizer, Template }");
  const base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
  onProgress("manifest");
  const manifest = await get(base, "qwen_edge.json", "json", fetchFn);
  if (manifest.format !== "qwen-edge-artifact" || !manifest.files || !manifest.model) {
    throw new QwenEdgeError(`${base} is not a qwen-edge model folder`);
  }
  const listed = (name, kind) => (name in manifest.files ? get(base, name, kind, fetchFn) : Promise.resolve(null));
  const [tokJson, tokenizerConfig, generationConfig, templateText] = await Promise.all([
    get(base, "tokenizer.json", "json", fetchFn), listed("tokenizer_config.json", "json"),
    listed("generation_config.json", "json"), listed("chat_template.jinja", "text")]);
  onProgress("weights");
  const graph = await get(base, "model.onnx", "bytes", fetchFn);
  const data = "model.onnx.data" in manifest.files ? await get(base, "model.onnx.data", "bytes", fetchFn) : null;
  onProgress("verify");
  await checkBytes("model.onnx", graph, manifest, verify);
  if (data) await checkBytes("model.onnx.data", data, manifest, verify);
  checkModelFields("the model", manifest, graph);
  ort.env.wasm.numThreads = threads;
  if (wasmPaths) ort.env.wasm.wasmPaths = wasmPaths;
  onProgress("session");
  const dtype = manifest.dtype === "fp16" ? "float16" : "float32";
  // the graph whose outputs are the new KV rows and the last logits (small_outputs.js), when it applies
  const small = smallOutputGraph(graph, dtype);
  let session;
  try {
    session = await ort.InferenceSession.create(small ?? graph, { executionProviders: ["wasm"], graphOptimizationLevel: "all",
      externalData: data ? [{ path: "model.onnx.data", data }] : undefined });
  } catch (e) {
    throw new QwenEdgeError(`onnxruntime-web cannot load the model: ${String(e.message || e).split("\n")[0]}`);
  }
  const tokenizer = new Tokenizer(tokJson, tokenizerConfig || {});
  const Cache = small ? OwnedCache : GrowingCache;
  prefillChunk ??= small ? 128 : 64;
  const backend = {
    newCache: (n) => new Cache(session, ort, manifest.model, n, prefillChunk, dtype),
    close: () => session.release(),
  };
  onProgress("ready");
  return new Model({ manifest, tokenizer, tokenizerConfig: tokenizerConfig || {}, generationConfig: generationConfig || {},
    Template, templateText, backend, maxLength, lookup });
}
