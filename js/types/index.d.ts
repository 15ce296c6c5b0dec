// Types of the qwen-edge JavaScript package (Node entry: src/node.js; browser entry: src/browser.js).

export class QwenEdgeError extends Error {}

export interface Message {
  role: "system" | "user" | "assistant" | "tool";
  content: string | null;         // null: an assistant message that only calls tools
  tool_calls?: ToolCall[];        // an assistant's calls (rendered back as <tool_call> blocks)
  tool_call_id?: string;          // a tool result: the call it answers
  name?: string;
}

/** A prompt: raw text, chat messages (rendered with the model's template) or token ids. */
export type Prompt = string | Message[] | number[];

export interface GenerateOptions {
  maxNewTokens?: number;          // default 512
  temperature?: number;           // 0 = greedy; default: the model's generation_config
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;     // Hugging Face's, over the whole sequence
  frequencyPenalty?: number;      // OpenAI's, over the generated tokens (-2..2)
  presencePenalty?: number;
  seed?: number | null;           // the same seed gives the same tokens (in JavaScript)
  stop?: string[];
  truncate?: boolean;             // cut a too-long prompt from the left instead of failing
  ignoreEos?: boolean;
  signal?: AbortSignal;           // stops the generation after the current token
  logprobs?: number;              // 0..20: Result.logprobs gets each token's log-probability and N alternatives
  tools?: Tool[];                 // rendered by the model's template; complete() parses the calls
  toolChoice?: "auto" | "none";   // "required" / a named function need constrained decoding: use the server
}

export interface Tool {
  type: "function";
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface TokenLogprob {
  id: number;
  logprob: number;
  top: [number, number][];        // [token id, log-probability], most likely first
}

export interface Timings {
  promptTokens: number;
  cachedTokens: number;
  newTokens: number;
  ttftS: number;
  prefillS: number;
  decodeS: number;
  totalS: number;
  prefillTps: number;
  decodeTps: number;
  /** With `lookup` (greedy): proposals made and kept, forward passes after the first token. */
  speculative?: { proposed: number; accepted: number; passes: number; acceptanceRate: number; tokensPerPass: number };
}

export interface Result {
  text: string;
  tokens: number[];
  finishReason: "eos" | "stop" | "length" | "cancelled";
  timings: Timings;
  logprobs?: TokenLogprob[];      // with the logprobs option
  toolCalls?: ToolCall[];         // with tools (complete())
  content?: string | null;        // with tools: the text outside the calls
}

export class TextStream implements AsyncIterable<string> {
  [Symbol.asyncIterator](): AsyncIterator<string>;
  /** Set once the stream has ended. */
  result: Result | null;
  done: boolean;
  read(): Promise<string>;
}

export class Chat {
  messages: Message[];
  last: Result | null;
  readonly tokens: number[];
  send(content: string, options?: GenerateOptions): TextStream;
  say(content: string, options?: GenerateOptions): Promise<string>;
  reset(system?: string | null): void;
}

export class Model {
  readonly maxLength: number;
  readonly manifest: { model: Record<string, unknown>; max_length: number; [k: string]: unknown };
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string;
  render(messages: Message[], options?: { addGenerationPrompt?: boolean; tools?: Tool[] | null }): string;
  promptIds(prompt: Prompt, tools?: Tool[] | null): number[];
  /** The prompt's ids checked against the context (or cut from the left when `truncate`). */
  fit(ids: number[], maxNewTokens: number, truncate: boolean): number[];
  stream(prompt: Prompt, options?: GenerateOptions): TextStream;
  complete(prompt: Prompt, options?: GenerateOptions): Promise<Result>;
  generate(prompt: Prompt, options?: GenerateOptions): Promise<string>;
  chat(options?: { system?: string | null } & GenerateOptions): Chat;
  /** Release the session. Safe mid-generation: running streams end at their next token (finishReason
   *  "cancelled") after the forward pass in flight; later calls throw a QwenEdgeError. */
  close(): Promise<void>;
  readonly closed: boolean;
}

export interface LoadOptions {
  threads?: number;        // onnxruntime intra-op threads (Node) / wasm threads (browser); 0 = default
  maxLength?: number;      // a shorter context than the export's
  verify?: boolean;        // sha256 of every file against the manifest (default true; sizes always)
  prefillChunk?: number;   // prompt tokens per forward pass (default 256 in Node, 128 in the browser)
  lookup?: number;         // 1..64: greedy generations check up to N tokens copied from earlier in the
                           // sequence in one pass (prompt-lookup speculative decoding: the same tokens)
}

/** Node: an artifact folder on disk. Browser: the URL the folder is served at. */
export function loadModel(source: string, options?: LoadOptions & { wasmPaths?: string }): Promise<Model>;

/** Node only: check a folder against its manifest; returns the manifest. */
export function checkFolder(folder: string, options?: { verify?: boolean }): Record<string, unknown>;
