// The model runs here, off the page's thread. Dependencies are loaded by URL (a module worker has no
// import map); with a bundler, import { loadModel } from "qwen-edge" instead.
const NM = "/js/node_modules";
// The handler is installed before anything is awaited, so no message from the page is missed.
const deps = Promise.all([
  import(`${NM}/onnxruntime-web/dist/ort.wasm.min.mjs`),
  import(`${NM}/@huggingface/tokenizers/dist/tokenizers.mjs`),
  import(`${NM}/@huggingface/jinja/dist/index.js`),
  import("/js/src/web.js"),
]);

let model = null;
let chat = null;

self.onmessage = async ({ data }) => {
  try {
    const [ort, { Tokenizer }, { Template }, { loadModelFromUrl }] = await deps;
    if (data.type === "load") {
      const threads = self.crossOriginIsolated ? (data.threads || 2) : 1;
      const t0 = performance.now();
      model = await loadModelFromUrl(data.url, { ort, Tokenizer, Template }, { threads, maxLength: data.maxLength,
        wasmPaths: `${NM}/onnxruntime-web/dist/`, onProgress: (stage) => self.postMessage({ type: "status", stage }) });
      chat = null;
      self.postMessage({ type: "ready", threads, seconds: (performance.now() - t0) / 1000,
        model: model.manifest.model.model_type, quantization: model.manifest.quantization?.method || model.manifest.dtype });
    } else if (data.type === "generate") {
      const opts = { maxNewTokens: data.maxNewTokens ?? 256, temperature: data.temperature };
      let stream;
      if (data.raw) {
        stream = model.stream(data.prompt, opts);
      } else {
        chat ??= model.chat({ system: data.system ?? null });
        stream = chat.send(data.prompt, opts);
      }
      for await (const piece of stream) self.postMessage({ type: "piece", text: piece });
      self.postMessage({ type: "done", result: stream.result });
    } else if (data.type === "bench") { // timings on given token ids (scripts/bench_js.mjs)
      const s = model.stream(data.ids, { maxNewTokens: data.newTokens, temperature: 0, ignoreEos: true });
      for await (const _ of s); // eslint-disable-line no-unused-vars
      self.postMessage({ type: "bench", result: s.result });
    } else if (data.type === "reset") {
      chat = null;
    }
  } catch (e) {
    self.postMessage({ type: "error", message: e.message });
  }
};
deps.then(() => self.postMessage({ type: "status", stage: "worker ready" }),
  (e) => self.postMessage({ type: "error", message: `cannot load the runtime: ${e.message}` }));
