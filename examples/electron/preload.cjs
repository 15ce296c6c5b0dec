// @ts-check
// The renderer gets a narrow API: send a message, receive pieces and status lines. No Node in the page.
const { contextBridge, ipcRenderer } = require("electron");

contextBridge.exposeInMainWorld("qwenEdge", {
  /** @param {string} text */
  send: (text) => ipcRenderer.invoke("send", text),
  /** @param {(piece: string) => void} cb */
  onPiece: (cb) => ipcRenderer.on("piece", (_e, piece) => cb(piece)),
  /** @param {(line: string) => void} cb */
  onStatus: (cb) => ipcRenderer.on("status", (_e, line) => cb(line)),
});
