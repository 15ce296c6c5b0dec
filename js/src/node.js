// qwen-edge for Node.js and Electron's main process: an artifact folder on disk, onnxruntime-node, and the
// in-place KV cache.
//
//   import { loadModel } from "qwen-edge";
//   const model = await loadModel("out/int4", { threads: 2 });
//   for await (const piece of model.stream("Hello", { maxNewTokens: 64 })) process.stdout.write(piece);

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-node";

import { InPlaceCache, OwnedCache } from "./cache.js";
import { Chat, Model, TextStream } from "./core.js";
import { checkOptions, QwenEdgeError } from "./errors.js";
import { checkModelFields } from "./graph.js";
import { smallOutputGraph } from "./small_outputs.js";

export { Chat, Model, QwenEdgeError, TextStream };

const MANIFEST = "qwen_edge.json";

function readJson(file, what) {
  try {
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    throw new QwenEdgeError(`cannot read ${what} ${file}: ${e.message.split("\n")[0]}`);
  }
}

/**
 * Check a folder against its manifest: every listed file exists with its recorded size, (verify) its
 * sha256 matches, and the manifest's model fields agree with model.onnx (graph.js). Throws a QwenEdgeError
 * naming the first damaged file or field. Returns the manifest.
 */
export function checkFolder(folder, { verify = true } = {}) {
  if (fs.existsSync(folder) && !fs.statSync(folder).isDirectory()) {
    throw new QwenEdgeError(`${folder} is a file, not a model folder (give the folder that holds ${MANIFEST})`);
  }
  if (!fs.existsSync(folder)) throw new QwenEdgeError(`no such model folder: ${folder}`);
  const mpath = path.join(folder, MANIFEST);
  if (!fs.existsSync(mpath)) throw new QwenEdgeError(`${folder} is not a qwen-edge model folder (no ${MANIFEST})`);
  const m = readJson(mpath, "the manifest");
  if (m.format !== "qwen-edge-artifact" || typeof m.files !== "object" || typeof m.model !== "object") {
    throw new QwenEdgeError(`${mpath} is not a qwen-edge manifest`);
  }
  if ((m.format_version ?? 0) > 1) throw new QwenEdgeError(`${folder} has artifact format ${m.format_version}: upgrade qwen-edge`);
  for (const name of ["model.onnx", "tokenizer.json"]) {
    if (!(name in m.files)) throw new QwenEdgeError(`${folder} is damaged: its manifest does not list ${name}`);
  }
  const sizes = m.sizes || {};
  for (const [name, digest] of Object.entries(m.files)) {
    const f = path.join(folder, name);
    if (!fs.existsSync(f)) throw new QwenEdgeError(`${folder} is damaged: ${name} is missing (listed in ${MANIFEST})`);
    const size = fs.statSync(f).size;
    if (name in sizes && size !== sizes[name]) {
      throw new QwenEdgeError(`${folder} is damaged: ${name} has ${size} bytes, its manifest says ${sizes[name]}`);
    }
    if (verify && sha256(f) !== digest) {
      throw new QwenEdgeError(`${folder} is damaged: ${name} does not match its manifest (sha256); re-export it ` +
        "(or pass verify: false)");
    }
  }
  checkModelFields(folder, m, fs.readFileSync(path.join(folder, "model.onnx")));
  return m;
}

function sha256(file) {
  const h = crypto.createHash("sha256");
  const fd = fs.openSync(file, "r");
  const buf = Buffer.allocUnsafe(1 << 22);
  try {
    for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0;) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest("hex");
}

/**
 * Load an artifact folder. Options: threads (0 = onnxruntime's default), maxLength (a shorter context:
 * smaller KV caches), verify (sha256 of every file; sizes are always checked), prefillChunk (tokens per
 * prefill pass: 256 as in Python, or 64 where the graph cannot be rewritten and every fed position's
 * logits are computed), lookup (N: greedy generations check up to N tokens copied from earlier in the
 * sequence in one forward pass, the same tokens faster where the output repeats the input; speculative.js).
 * @returns {Promise<Model>}
 */
export async function loadModel(folder, options = {}) {
  let { threads = 0, maxLength, verify = true, prefillChunk, lookup } =
    checkOptions(options, ["threads", "maxLength", "verify", "prefillChunk", "lookup"], "loadModel");
  const manifest = checkFolder(folder, { verify });
  if (prefillChunk !== undefined && (!Number.isInteger(prefillChunk) || prefillChunk < 1)) throw new QwenEdgeError(`prefillChunk must be an integer >= 1, got ${prefillChunk}`);
  if (!Number.isInteger(threads) || threads < 0) throw new QwenEdgeError(`threads must be an integer >= 0, got ${threads}`);
  const tokJson = readJson(path.join(folder, "tokenizer.json"), "the tokenizer");
  const tokCfgPath = path.join(folder, "tokenizer_config.json");
  const tokenizerConfig = fs.existsSync(tokCfgPath) ? readJson(tokCfgPath, "the tokenizer config") : {};
  let tokenizer;
  try {
    tokenizer = new Tokenizer(tokJson, tokenizerConfig);
  } catch (e) {
    throw new QwenEdgeError(`${folder}: tokenizer.json does not load (${e.message})`);
  }
  const genPath = path.join(folder, "generation_config.json");
  const generationConfig = fs.existsSync(genPath) ? readJson(genPath, "the generation config") : {};
  const jinjaPath = path.join(folder, "chat_template.jinja");
  const templateText = fs.existsSync(jinjaPath) ? fs.readFileSync(jinjaPath, "utf8") : null;
  // as Python: memory patterns are cached per input shape (a new one every context length: time and a leak)
  const opts = { graphOptimizationLevel: "all", executionProviders: ["cpu"], logSeverityLevel: 3, enableMemPattern: false };
  if (threads) opts.intraOpNumThreads = threads;
  const dtype = manifest.dtype === "fp16" ? "float16" : "float32";
  const graphPath = path.join(folder, "model.onnx");
  // The graph whose outputs are small (small_outputs.js); its weights are still read from the folder.
  const small = smallOutputGraph(fs.readFileSync(graphPath), dtype);
  if (small) opts.extra = { session: { model_external_initializers_file_folder_path: path.resolve(folder) } };
  let session;
  try {
    session = await ort.InferenceSession.create(small ?? graphPath, opts);
  } catch (e) {
    throw new QwenEdgeError(`onnxruntime cannot load ${graphPath}: ${String(e.message).split("\n")[0]}`);
  }
  const spec = manifest.model;
  const Cache = small ? OwnedCache : InPlaceCache;
  prefillChunk ??= small ? 256 : 64;
  const backend = {
    newCache: (n) => new Cache(session, ort, spec, n, prefillChunk, dtype),
    close: () => session.release(),
  };
  return new Model({ manifest, tokenizer, tokenizerConfig, generationConfig, Template, templateText, backend, maxLength,
    lookup });
}
