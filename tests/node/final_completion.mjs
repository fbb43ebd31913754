// The openai Node SDK as a client of railguard: streams one chat completion with
// `chat.completions.stream(...)` and prints `finalChatCompletion()` and the last chunk as
// JSON. Usage: node final_completion.mjs BASE_URL CONFIG_ID INCLUDE_USAGE(0|1) MESSAGE
import OpenAI from "openai";

const [base, configId, includeUsage, message] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "sk-client-key", maxRetries: 0 });
const params = {
  model: "m1",
  messages: [{ role: "user", content: message }],
  guardrails: { config_id: configId },
};
if (includeUsage === "1") params.stream_options = { include_usage: true };
const stream = client.chat.completions.stream(params);
let last = null;
stream.on("chunk", (chunk) => {
  last = chunk;
});
const final = await stream.finalChatCompletion();
process.stdout.write(JSON.stringify({ final, last }));
