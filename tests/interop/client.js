// A BuildKit API client on a second gRPC stack (grpc-js: pure JavaScript HTTP/2, protobufjs),
// driven by tests/interop/test_grpc_js.py.
//   node client.js ADDR PROTO_DIR GOOGLE_DIR workers|info      -> JSON of the decoded response
//   node client.js ADDR PROTO_DIR GOOGLE_DIR solve REQ_FILE     -> base64 of the raw response, then
//                                                                  the Status stream's messages
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [addr, protoDir, googleDir, command, arg] = process.argv.slice(2);
const definition = loader.loadSync(["buildkitpy/api/control.proto"], {
  includeDirs: [protoDir, googleDir], keepCase: true, longs: String, enums: String, defaults: false,
});
const Control = grpc.loadPackageDefinition(definition).moby.buildkit.v1.Control;
const client = new Control(addr, grpc.credentials.createInsecure());

function fail(err) {
  console.error(`${err.code}: ${err.details || err.message}`);
  process.exit(1);
}

if (command === "workers" || command === "info") {
  const method = command === "workers" ? "ListWorkers" : "Info";
  client[method]({}, (err, resp) => {
    if (err) fail(err);
    console.log(JSON.stringify(resp));
    client.close();
  });
} else if (command === "solve") {
  // The request is pre-serialised by the test; grpc-js carries the bytes as they are.
  const request = fs.readFileSync(arg);
  const ref = JSON.parse(fs.readFileSync(arg + ".json")).ref;
  const raw = (x) => x;
  const statusLines = [];
  const status = client.makeServerStreamRequest("/moby.buildkit.v1.Control/Status", raw, raw,
    Buffer.from(definitionOfStatus(ref)));
  status.on("data", (msg) => statusLines.push(Buffer.from(msg).toString("base64")));
  const statusDone = new Promise((resolve) => {
    status.on("end", resolve);
    status.on("error", resolve);
  });
  client.makeUnaryRequest("/moby.buildkit.v1.Control/Solve", raw, raw, request, async (err, resp) => {
    if (err) fail(err);
    await statusDone;
    console.log(JSON.stringify({ solve: Buffer.from(resp).toString("base64"), status: statusLines }));
    client.close();
  });
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}

// StatusRequest{Ref} by hand: field 1, wire type 2 (length-delimited).
function definitionOfStatus(ref) {
  const body = Buffer.from(ref, "utf8");
  return Buffer.concat([Buffer.from([0x0a, body.length]), body]);
}
