// @ts-check
/** @typedef {{ send(text: string): Promise<{ timings: { decodeTps: number } }>, onPiece(cb: (p: string) => void): void, onStatus(cb: (s: string) => void): void }} Api */
const api = /** @type {Api} */ (/** @type {any} */ (window).qwenEdge);
const log = /** @type {HTMLDivElement} */ (document.getElementById("log"));
const input = /** @type {HTMLTextAreaElement} */ (document.getElementById("prompt"));
const status = /** @type {HTMLDivElement} */ (document.getElementById("status"));
/** @type {HTMLDivElement | null} */
let current = null;

api.onStatus((line) => { status.textContent = line; });
api.onPiece((piece) => { if (current) current.textContent += piece; });

/** @type {HTMLButtonElement} */ (document.getElementById("send")).onclick = async () => {
  const you = document.createElement("div");
  you.textContent = input.value;
  current = document.createElement("div");
  current.className = "model";
  log.append(you, current);
  const r = await api.send(input.value);
  status.textContent = `${r.timings.decodeTps.toFixed(1)} tokens/s`;
};
