#!/usr/bin/env bash
# Installs the Debian packages the test suites and benchmarks use (as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# iproute2: namespaces/veth; curl, dnsutils (dig), netcat, socat: clients;
# microsocks, dante-server, tinyproxy, redsocks: upstream proxies; dnsmasq-base:
# the real resolver; redis-server/tools/sentinel: the Redis view, shared pool
# and their failover tests; iperf3, dnsperf,
# apache2-utils (ab), wrk: benchmarks; iptables: the redsocks baseline;
# util-linux: setpriv for the non-root test; g++/make/python3: node-gyp;
# ethtool: the kernel's view of TUN offloads (TSO) in test/e2e/tun.test.ts;
# hping3: SYN floods (issue 16); clang-format: the native/ style check of `npm run lint`;
# chromium: the real dashboard in a headless browser (issue 14, driven by puppeteer-core);
# nftables: cgroup bypass in global mode (issue 19);
# systemd: systemd-analyze verify/security of packaging/fakeproxy.service (test/unit/packaging.test.ts,
# works without systemd as PID 1).
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  iproute2 curl dnsutils netcat-openbsd socat microsocks dante-server tinyproxy \
  redsocks dnsmasq-base redis-server redis-tools redis-sentinel iperf3 dnsperf apache2-utils wrk \
  iptables iputils-ping util-linux procps hping3 g++ make python3 ca-certificates ethtool clang-format chromium nftables systemd openssl >/dev/null
# Package postinst scripts may start system services; our tests start their own.
for svc in redis-server redis-sentinel tinyproxy danted; do service "$svc" stop >/dev/null 2>&1 || true; done
