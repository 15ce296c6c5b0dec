// Every error the package raises on bad input is a QwenEdgeError with a message meant for the user.
export class QwenEdgeError extends Error {
  constructor(message) {
    super(message);
    this.name = "QwenEdgeError";
  }
}

// A load option the package does not know is refused, never silently ignored: a caller must not believe a
// setting took effect when it did not (the server's rule for request fields, protocol.py).
const UNSUPPORTED = {
  draft: "a draft model (speculative decoding with a second model) is not supported by the JavaScript package: " +
    "use { lookup: N } (prompt lookup), or the Python runtime for a draft",
  draftTokens: "draftTokens goes with a draft model, which the JavaScript package does not support: use { lookup: N }",
};

export function checkOptions(options, allowed, what) {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options)) throw new QwenEdgeError(`${what} options must be an object`);
  for (const key of Object.keys(options)) {
    if (allowed.includes(key)) continue;
    if (UNSUPPORTED[key]) throw new QwenEdgeError(UNSUPPORTED[key]);
    throw new QwenEdgeError(`unknown ${what} option '${key}' (known: ${allowed.join(", ")})`);
  }
  return options;
}
