// Runs the official Node clients against a gateway at process.argv[2]; prints one JSON object.
import OpenAI from "openai";
import { streamText, generateText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const base = process.argv[2] + "/v1";
const model = process.argv[3];
const prompt = "tell me something";
const out = {};

const client = new OpenAI({ baseURL: base, apiKey: "unused" });
const chat = await client.chat.completions.create({ model, messages: [{ role: "user", content: prompt }] });
out.chat = chat.choices[0].message.content;

let streamed = "";
const stream = await client.chat.completions.create({ model, stream: true, messages: [{ role: "user", content: prompt }] });
for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
out.chatStream = streamed;

let responsesText = "";
const events = await client.responses.create({ model, input: prompt, stream: true });
for await (const event of events) if (event.type === "response.output_text.delta") responsesText += event.delta;
out.responsesStream = responsesText;

// The Node SDK asks for base64 embeddings by default and decodes them itself.
const embedding = await client.embeddings.create({ model, input: "hello" });
out.embedding = embedding.data[0].embedding.slice(0, 4);

const provider = createOpenAI({ baseURL: base, apiKey: "unused" });
const viaResponses = streamText({ model: provider(model), prompt });  // the SDK's default: Responses
let aiText = "";
for await (const piece of viaResponses.textStream) aiText += piece;
out.vercelResponses = aiText;
out.vercelResponsesUsage = (await viaResponses.usage).outputTokens ?? null;

const viaChat = await generateText({ model: provider.chat(model), prompt });
out.vercelChat = viaChat.text;

console.log(JSON.stringify(out));
