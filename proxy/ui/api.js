// Talking to railguard: every URL is relative to the page, so `--prefix` just works.

export const CHAT_URL = "v1/chat/completions";

/** A failure shown to the person as a readable sentence. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, param = null, type = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
    this.type = type;
  }

  /** The server answered 422 because it keeps no conversation threads. */
  get threadsDisabled() {
    return (
      this.status === 422 &&
      (this.code === "threads_disabled" ||
        (this.param === "thread_id" && /not enabled/i.test(this.message)))
    );
  }
}

const STATUS_HINTS = {
  400: "The request was not valid",
  401: "The upstream refused the credentials",
  403: "The upstream refused the request",
  404: "Not found",
  413: "The message is too large for the server",
  422: "The server refused the request",
  429: "The upstream is rate limiting",
  500: "railguard had an internal error",
  502: "The model server (upstream) could not be reached or failed",
  503: "The server is not ready",
  504: "The model server (upstream) timed out",
};

/** An error answer (OpenAI's envelope, or the spec's `detail`) as an ApiError. */
async function errorFrom(response) {
  let message = "";
  let fields = {};
  try {
    const data = await response.json();
    const error = data && typeof data.error === "object" && data.error ? data.error : {};
    message = error.message || (typeof data.detail === "string" ? data.detail : "");
    fields = { code: error.code ?? null, param: error.param ?? null, type: error.type ?? null };
  } catch {
    // not JSON: the status says enough
  }
  const hint = STATUS_HINTS[response.status] || `HTTP ${response.status}`;
  const text = message ? `${hint} (${response.status}): ${message}` : `${hint} (${response.status}).`;
  return new ApiError(text, { status: response.status, ...fields });
}

function unreachable(error) {
  return new ApiError(`railguard could not be reached: ${error.message || error}`);
}

export async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (error) {
    throw unreachable(error);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/**
 * POST a streamed chat completion and call onEvent(object) for each SSE `data:` event
 * as it arrives, until `[DONE]` or the end of the body. Errors before the stream starts
 * (422, 502, ...) throw an ApiError; errors inside the stream arrive as events.
 * Resolves true when the stream ended with `[DONE]`, false when it was cut short.
 */
export async function streamChat(body, onEvent, signal) {
  let response;
  try {
    response = await fetch(CHAT_URL, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable(error);
  }
  if (!response.ok) throw await errorFrom(response);
  const type = response.headers.get("Content-Type") || "";
  if (!type.includes("text/event-stream")) {
    // A server that answered with one JSON completion: treat it as a one-event stream.
    onEvent(await response.json());
    return true;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return true;
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        throw new ApiError("The server sent an event that is not JSON; the answer stopped there.");
      }
      onEvent(event);
    }
  }
  return false; // the body ended without [DONE]
}
