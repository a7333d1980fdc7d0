/**
 * A plain TCP port forwarder on the native splice relay, for the iperf
 * scenario's "proxy without TUN" rows: what any proxy that terminates TCP
 * costs (a second TCP connection, a splice hop), without the TUN and the
 * engine. Run in a namespace:
 *   node dist/bench/lib/splice-forward.js <listen-port> <target-ip> <target-port>
 * Prints "ready" once it listens; SIGTERM ends it.
 */
import * as net from 'node:net';
import { SpliceRelay } from '../../src/proxy/relay.js';

const [listenPort, targetIp, targetPort] = process.argv.slice(2);
const relay = new SpliceRelay({ idleTimeoutMs: 0 });
const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (app) => {
  const up = net.connect({ host: targetIp, port: Number(targetPort), allowHalfOpen: true });
  up.once('connect', () => {
    if (!relay.handOff(app, up)) {
      app.resetAndDestroy();
      up.destroy();
    }
  });
  up.once('error', () => app.resetAndDestroy());
});
server.listen(Number(listenPort), '127.0.0.1', () => console.log('ready'));
process.once('SIGTERM', () => {
  relay.stop();
  server.close();
  process.exit(0);
});
