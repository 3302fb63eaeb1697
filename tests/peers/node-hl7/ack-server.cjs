// MLLP receiver for tests: ACKs every message with the code given as argv[3] (default AA).
// Prints "listening <port>" once bound (peers.md C3). Re-sends earlier ACKs on a
// persistent connection: the duplicate-ACK chaos peer.
const { Server } = require('node-hl7-server');
const port = Number(process.argv[2] || 22577);
const code = process.argv[3] || 'AA';
const server = new Server({ bindAddress: '127.0.0.1' });
const inbound = server.createInbound({ port }, async (req, res) => {
  await res.sendResponse(code);
});
inbound.on('listen', () => console.log(`listening ${port}`));
