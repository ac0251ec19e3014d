// A one-shot DTLS 1.2 PSK client built on node-dtls-client (pure JavaScript, AlCalzone).
//
// tests/test_interop_stacks.py runs it as a subprocess against our server:
//
//   node node_dtls_client.js HOST PORT IDENTITY HEXKEY MESSAGE [CIPHER,CIPHER,...]
//
// It handshakes, sends MESSAGE once, prints the first reply and closes with close_notify.
// Every line it prints starts with a word the test can match:
//
//   connected cipher=0x00ae        the handshake finished; the suite id the client uses
//   reply: <text>                  the decrypted reply (as UTF-8)
//   error: <message>               the library gave up (alert, timeout, socket error)
//
// Exit status: 0 after a reply, 1 after an error, 3 when the whole run took too long.
// The library never retransmits a handshake flight by itself (see "TODO: implement
// retransmission" in its source); its "timeout" option bounds the whole handshake instead.

import { dtls } from "node-dtls-client";

const RUN_LIMIT_MS = 15000;
const HANDSHAKE_LIMIT_MS = 10000;

function main(argv) {
  if (argv.length < 5 || argv.length > 6) {
    console.log("error: usage: node_dtls_client.js HOST PORT IDENTITY HEXKEY MESSAGE [CIPHERS]");
    process.exit(2);
  }
  const [host, port, identity, hexKey, message, cipherList] = argv;
  const options = {
    type: host.includes(":") ? "udp6" : "udp4",
    address: host,
    port: Number(port),
    psk: { [identity]: Buffer.from(hexKey, "hex") },
    timeout: HANDSHAKE_LIMIT_MS,
  };
  if (cipherList) {
    // Names as node-dtls-client spells them, e.g. TLS_PSK_WITH_AES_128_CBC_SHA256.
    options.ciphers = cipherList.split(",");
  }

  // A hard stop, whatever the library does: the test must never hang on us.
  const watchdog = setTimeout(() => {
    console.log("error: no reply within the run limit");
    process.exit(3);
  }, RUN_LIMIT_MS);

  const socket = dtls.createSocket(options);
  socket.on("connected", () => {
    // Which suite the handshake settled on: the library keeps it on the record layer's
    // current write epoch (not a public API, hence the defensive lookups).
    const suite = socket.recordLayer?.currentWriteEpoch?.connectionState?.cipherSuite;
    const id = typeof suite?.id === "number" ? `0x${suite.id.toString(16).padStart(4, "0")}` : "?";
    console.log(`connected cipher=${id}`);
    socket.send(Buffer.from(message, "utf8"));
  });
  socket.on("message", (data) => {
    console.log(`reply: ${data.toString("utf8")}`);
    clearTimeout(watchdog);
    socket.close(() => process.exit(0));
  });
  socket.on("error", (error) => {
    console.log(`error: ${error.message}`);
    clearTimeout(watchdog);
    process.exit(1);
  });
}

main(process.argv.slice(2));
