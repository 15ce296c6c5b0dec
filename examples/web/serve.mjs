// A tiny static server for the web example: the repository (page, package, node_modules) and one model
// folder at /model/, with the cross-origin isolation headers that wasm threads need (SharedArrayBuffer).
//
//   node examples/web/serve.mjs --model out/int4 [--port 8080]     then open the printed URL
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const model = path.resolve(arg("--model", path.join(root, "out", "int4")));
const port = Number(arg("--port", "8080"));
if (!fs.existsSync(path.join(model, "qwen_edge.json"))) {
  console.error(`error: ${model} is not a qwen-edge model folder (pass --model DIR)`);
  process.exit(2);
}
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
  ".wasm": "application/wasm", ".css": "text/css", ".png": "image/png" };

const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = url.startsWith("/model/") ? path.join(model, url.slice(7)) : path.join(root, url);
  const base = url.startsWith("/model/") ? model : root;
  const headers = { "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-cache" };
  if (!path.resolve(file).startsWith(base) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404, headers).end("not found");
    return;
  }
  const stat = fs.statSync(file);
  res.writeHead(200, { ...headers, "Content-Type": TYPES[path.extname(file)] || "application/octet-stream",
    "Content-Length": stat.size });
  fs.createReadStream(file).pipe(res);
});
server.listen(port, "127.0.0.1", () => {
  const { port: p } = server.address();
  console.log(JSON.stringify({ url: `http://127.0.0.1:${p}/examples/web/index.html`, model }));
});
