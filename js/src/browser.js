// qwen-edge for bundled web apps: onnxruntime-web (wasm) and the tokenizer / template packages imported
// by name. Without a bundler, import ./web.js and pass them in (examples/web/worker.js does).

import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import * as ort from "onnxruntime-web/wasm";

import { Chat, Model, TextStream } from "./core.js";
import { QwenEdgeError } from "./errors.js";
import { loadModelFromUrl } from "./web.js";

export { Chat, Model, QwenEdgeError, TextStream };

/** Load an artifact folder served at `baseUrl` (see web.js for the options). */
export function loadModel(baseUrl, options = {}) {
  return loadModelFromUrl(baseUrl, { ort, Tokenizer, Template }, options);
}
