// @ts-check
// Electron's main process runs the model with the Node package (onnxruntime-node, in-place KV cache) and
// streams text to the window over IPC. Start: npm install && npx electron . /path/to/artifact
import path from "node:path";
import { fileURLToPath } from "node:url";

import { app, BrowserWindow, ipcMain } from "electron";
import { loadModel } from "qwen-edge";

const here = path.dirname(fileURLToPath(import.meta.url));
const folder = process.argv[process.argv.length - 1];

/** @type {import("qwen-edge").Model | null} */
let model = null;
/** @type {import("qwen-edge").Chat | null} */
let chat = null;

async function createWindow() {
  const win = new BrowserWindow({ width: 900, height: 700,
    webPreferences: { preload: path.join(here, "preload.cjs"), contextIsolation: true, sandbox: true } });
  await win.loadFile(path.join(here, "index.html"));
  try {
    model = await loadModel(folder, { threads: 2 });
    chat = model.chat({ maxNewTokens: 512 });
    win.webContents.send("status", `ready: ${folder}`);
  } catch (e) {
    win.webContents.send("status", `error: ${e instanceof Error ? e.message : String(e)}`);
  }
}

ipcMain.handle("send", async (event, /** @type {string} */ text) => {
  if (!chat) throw new Error("the model is not loaded");
  const stream = chat.send(text);
  for await (const piece of stream) event.sender.send("piece", piece);
  return stream.result;
});

app.whenReady().then(createWindow);
app.on("window-all-closed", async () => {
  await model?.close();
  app.quit();
});
