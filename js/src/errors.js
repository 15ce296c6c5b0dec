// Every error the package raises on bad input is a QwenEdgeError with a message meant for the user.
export class QwenEdgeError extends Error {
  constructor(message) {
    super(message);
    this.name = "QwenEdgeError";
  }
}
