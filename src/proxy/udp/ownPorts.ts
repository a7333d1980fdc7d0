/**
 * Local UDP ports held by this process's upstream association sockets
 * (direct and SOCKS5). A datagram the engine NATs onto the UDP listener
 * whose source is one of these ports was sent by the daemon itself and came
 * back through the TUN: a route sends its destination into the device
 * (e.g. a resolver address routed into fp0 with --no-dns-hijack) while the
 * outbound relays to it directly. Serving it would open another association
 * whose socket sends into the TUN again — an endless loop that opens an
 * association (a socket) and a NAT flow per round. The listener drops such
 * datagrams instead (counted as 'loop').
 *
 * Process-wide on purpose: while one of our sockets holds a port, no app
 * can send from it (the kernel refuses a second bind), so a flow from that
 * port is ours whichever listener sees it.
 */
const ports = new Map<number, number>();

export function holdOwnPort(port: number): void {
  ports.set(port, (ports.get(port) ?? 0) + 1);
}

export function releaseOwnPort(port: number): void {
  const n = ports.get(port) ?? 0;
  if (n <= 1) ports.delete(port);
  else ports.set(port, n - 1);
}

export function isOwnPort(port: number): boolean {
  return ports.has(port);
}
