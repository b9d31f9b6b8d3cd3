/**
 * Errors a host sees from the core. Two kinds on purpose: a {@link CancelledError} is the
 * normal end of a request nobody needs any more (a newer keystroke, an abort, a document that
 * moved on) and must stay silent; a {@link SpliceError} is something the user should hear
 * about (no connection, a refused document, a server error) and carries the server's code.
 */

export class SpliceError extends Error {
  constructor(
    /** A protocol error code (`queue_full`, `document_too_large`, ...) or a client one: `disconnected`, `timeout`, `not_open`. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SpliceError";
  }
}

export class CancelledError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = "CancelledError";
  }
}

export function isCancelled(err: unknown): err is CancelledError {
  return err instanceof CancelledError;
}
