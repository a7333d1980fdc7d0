/**
 * Idle-connection tool for nat-scale, run inside a namespace as
 * `node dist/bench/lib/hold.js server <ip> <port>` or
 * `node dist/bench/lib/hold.js client <host> <port> <count>`.
 *
 * server: accepts, echoes the first line of each connection, then holds it; prints
 *         "open <n>" whenever the number of open connections changes (at most every 100 ms).
 * client: opens <count> connections (at most 256 connecting at once), sends "hold <i>\n"
 *         on each and waits for the echo (so every connection is verified end to end),
 *         prints "ready <count>" and holds them until stdin closes or SIGTERM, then
 *         closes them all and prints "closed".
 */
import { createConnection, createServer, type Socket } from 'node:net';

function server(ip: string, port: number): void {
  const open = new Set<Socket>();
  let last = -1;
  setInterval(() => {
    if (open.size !== last) {
      last = open.size;
      process.stdout.write(`open ${open.size}\n`);
    }
  }, 100);
  createServer((s) => {
    open.add(s);
    let buf = '';
    let echoed = false;
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      if (echoed) return;
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        echoed = true;
        s.write(buf.slice(0, nl + 1));
      }
    });
    s.on('error', () => {});
    s.on('close', () => open.delete(s));
  })
    .listen({ host: ip, port, backlog: 4096 }, () => process.stdout.write('listening\n'))
    .on('error', (e) => {
      process.stderr.write(`hold server: ${e.message}\n`);
      process.exit(1);
    });
}

async function client(host: string, port: number, count: number): Promise<void> {
  const socks: Socket[] = [];
  let next = 0;
  let failed = 0;
  const one = (i: number) =>
    new Promise<void>((resolve) => {
      const s = createConnection({ host, port });
      const line = `hold ${i}\n`;
      let got = '';
      const t = setTimeout(() => {
        failed++;
        s.destroy();
        resolve();
      }, 20_000);
      s.setEncoding('utf8');
      s.on('connect', () => s.write(line));
      s.on('data', (d: string) => {
        got += d;
        if (got === line) {
          clearTimeout(t);
          socks.push(s);
          resolve();
        }
      });
      s.on('error', () => {
        clearTimeout(t);
        failed++;
        resolve();
      });
    });
  const worker = async () => {
    while (next < count) await one(next++);
  };
  await Promise.all(Array.from({ length: Math.min(256, count) }, worker));
  if (failed > 0) process.stdout.write(`failed ${failed}\n`);
  process.stdout.write(`ready ${socks.length}\n`);
  const close = () => {
    for (const s of socks) s.destroy();
    process.stdout.write('closed\n');
    setTimeout(() => process.exit(0), 200);
  };
  process.stdin.on('end', close);
  process.stdin.resume();
  process.once('SIGTERM', close);
}

const [mode, a, b, c] = process.argv.slice(2);
if (mode === 'server') server(a, Number(b));
else if (mode === 'client') void client(a, Number(b), Number(c));
else {
  process.stderr.write('usage: hold.js server <ip> <port> | client <host> <port> <count>\n');
  process.exit(2);
}
