#!/usr/bin/env node
// Quorum from Node.js, with no generated code: @grpc/proto-loader reads protos/ at start-up.
//
//   npm ci                          # in this folder, from package-lock.json
//   node client.js [--router HOST:PORT] [--voter HOST:PORT] [--cost HOST:PORT]
//
// Calls Moderate, Complete, CompleteStream and GetUsageSummary, then makes one call that must
// fail (an unknown model) and decodes its rich error details: the trailer
// grpc-status-details-bin holds a google.rpc.Status whose details hold a google.rpc.ErrorInfo
// (domain "quorum", reason in UPPER_SNAKE, metadata). Prints one JSON object per call.
// $QUORUM_API_KEY, when set, is sent as "authorization: Bearer <key>"; it is never printed.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

// Where the .proto files come from: Quorum's own API (protos/ of this repository), and
// google/rpc/status.proto + error_details.proto (cost.proto imports Status; ErrorInfo decodes
// the details) from the npm package google-proto-files. google/protobuf/*.proto (Timestamp,
// Duration, Any) are built into protobufjs.
const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const GOOGLEAPIS = path.dirname(require.resolve("google-proto-files/package.json"));
const INCLUDE_DIRS = [PROTOS, GOOGLEAPIS];

const CALL_TIMEOUT_MS = 30_000; // gRPC's default is no deadline at all: always set one

const { values: opts } = parseArgs({
  options: {
    router: { type: "string", default: "127.0.0.1:50051" },
    voter: { type: "string", default: "127.0.0.1:50052" },
    cost: { type: "string", default: "127.0.0.1:50053" },
    prompt: { type: "string", default: "Summarize the plot of Hamlet in two sentences." },
    "bad-model": { type: "string", default: "no-such-model" },
  },
});

// Field names as in the .proto (snake_case), int64 as strings, enums by name.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: INCLUDE_DIRS,
};
const packageDefinition = protoLoader.loadSync(
  ["quorum/router/v1/router.proto", "quorum/voter/v1/voter.proto", "quorum/cost/v1/cost.proto"],
  LOADER_OPTIONS,
);
const api = grpc.loadPackageDefinition(packageDefinition);

// The same files through protobufjs, to decode google.rpc.Status and the Any it holds.
const errorRoot = new protobuf.Root();
errorRoot.resolvePath = (_origin, target) => {
  for (const dir of INCLUDE_DIRS) {
    const candidate = path.join(dir, target);
    try {
      fs.accessSync(candidate);
      return candidate;
    } catch {
      // not in this include directory
    }
  }
  return target;
};
errorRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]);
const StatusType = errorRoot.lookupType("google.rpc.Status");

/** The google.rpc.Status of a failed call (null when the server sent none), its details
 * unpacked: each Any becomes {"@type": name, ...fields}. */
function richStatus(err) {
  const raw = err.metadata && err.metadata.get("grpc-status-details-bin");
  if (!raw || raw.length === 0) return null;
  const status = StatusType.decode(raw[0]);
  const details = status.details.map((any) => {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = errorRoot.lookupType(name); // throws for a type this client does not know
    return { "@type": name, ...type.toObject(type.decode(any.value), { longs: String }) };
  });
  return { code: status.code, message: status.message, details };
}

function credentials() {
  return grpc.credentials.createInsecure(); // loopback; see the README's TLS section otherwise
}

function metadata() {
  const md = new grpc.Metadata();
  if (process.env.QUORUM_API_KEY) md.set("authorization", `Bearer ${process.env.QUORUM_API_KEY}`);
  return md;
}

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata(), { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

function print(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

async function moderate(voter) {
  const r = await unary(voter, "Moderate", { text: "You are a stupid worthless idiot." });
  print({
    call: "Moderate",
    is_safe: r.is_safe,
    confidence: Number(r.confidence.toFixed(3)),
    requires_review: r.requires_review,
    reasons: r.reasons,
    votes: r.votes.map((v) => ({ model: v.model, status: v.status, is_safe: v.is_safe })),
  });
}

async function complete(router) {
  const r = await unary(router, "Complete", { prompt: opts.prompt });
  print({
    call: "Complete",
    model: r.model,
    provider: r.provider,
    simulated: r.simulated,
    route_reason: r.route_reason,
    text: r.text,
    usage: r.usage,
    cost: r.cost,
    usage_recorded: r.usage_recorded,
    input_moderation_is_safe: r.input_moderation ? r.input_moderation.is_safe : null,
  });
}

function completeStream(router) {
  return new Promise((resolve, reject) => {
    const call = router.CompleteStream({ request: { prompt: opts.prompt } }, metadata(), {
      deadline: deadline(),
    });
    let text = "";
    let deltas = 0;
    let summary = null;
    call.on("data", (event) => {
      if (event.event === "delta") {
        text += event.delta;
        deltas += 1;
      } else if (event.event === "summary") {
        summary = event.summary;
      }
    });
    call.on("error", reject);
    call.on("end", () => {
      if (!summary) {
        reject(new Error("CompleteStream ended without a summary"));
        return;
      }
      print({
        call: "CompleteStream",
        model: summary.model,
        deltas,
        text,
        finish_reason: summary.finish_reason,
        usage: summary.usage,
        cost: summary.cost,
        usage_recorded: summary.usage_recorded,
      });
      resolve();
    });
  });
}

async function usageSummary(cost) {
  const r = await unary(cost, "GetUsageSummary", {});
  const perModel = (m) => ({ model: m.model, requests: m.requests, cost: m.cost });
  print({
    call: "GetUsageSummary",
    requests: r.requests,
    usage: r.usage,
    totals: r.totals,
    models: r.models.map(perModel),
    // calls answered by simulated models: what they would have cost, apart from real spend
    simulated_requests: r.simulated_requests,
    simulated_totals: r.simulated_totals,
    simulated_models: r.simulated_models.map(perModel),
  });
}

async function unknownModel(router) {
  try {
    await unary(router, "Complete", { prompt: "hello", model: opts["bad-model"] });
  } catch (err) {
    if (err.code === undefined) throw err; // not a gRPC status: a bug here
    const status = richStatus(err);
    const info = status && status.details.find((d) => d["@type"] === "google.rpc.ErrorInfo");
    print({
      call: "Complete (unknown model)",
      code: grpc.status[err.code],
      message: err.details,
      error_info: info
        ? { reason: info.reason, domain: info.domain, metadata: info.metadata }
        : null,
    });
    return;
  }
  throw new Error(`model ${JSON.stringify(opts["bad-model"])} was accepted`);
}

async function main() {
  const router = new api.quorum.router.v1.RouterService(opts.router, credentials());
  const voter = new api.quorum.voter.v1.VoterService(opts.voter, credentials());
  const cost = new api.quorum.cost.v1.CostService(opts.cost, credentials());
  try {
    await moderate(voter);
    await complete(router);
    await completeStream(router);
    await usageSummary(cost);
    await unknownModel(router);
  } finally {
    for (const client of [router, voter, cost]) client.close();
  }
}

main().catch((err) => {
  const code = err.code !== undefined ? ` (${grpc.status[err.code]})` : "";
  process.stderr.write(`error${code}: ${err.details || err.message}\n`);
  process.exit(1);
});
