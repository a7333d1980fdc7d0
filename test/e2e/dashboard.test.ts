/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The real dashboard in a real browser: MetaCubeXD (a built copy, served by
 * the daemon's own `--ui`) in Debian's headless Chromium, driven through
 * puppeteer-core. Chromium runs inside the client namespace (`ip netns exec`
 * wraps the binary; puppeteer talks to it over a pipe), so it reaches the
 * controller on the daemon's loopback like a user's browser on the gateway.
 *
 * We log in through the dashboard's own setup page and assert what a person
 * sees: a curl download through the TUN listed by host name with growing
 * bytes; the traffic graph and the speed card above zero during it; the
 * close button resetting curl (exit 56); a click on another proxy of a
 * select group sending the next connection through the other SOCKS5
 * server (its log). Screenshots go to test-artifacts/dashboard/ (printed).
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { capture, createTopology, ECHO_PORT, HTTP_PORT, startPickProxies, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();
const SECRET = 'dashboard-secret';
const CONTROLLER = 'http://127.0.0.1:9090';
const ARTIFACTS = join(ROOT, 'test-artifacts', 'dashboard');
/** Generous: Chromium and the daemon share 2 busy cores with other suites. */
const UI_TIMEOUT = 45_000;

/** The built MetaCubeXD (../shared/fixtures/metacubexd/ next to the repo, or FAKEPROXY_METACUBEXD). */
function dashboardDir(): string {
  const candidates = [
    process.env.FAKEPROXY_METACUBEXD,
    join(ROOT, '..', 'shared', 'fixtures', 'metacubexd'),
    '/work/shared/fixtures/metacubexd',
  ].filter((d): d is string => d !== undefined && d !== '');
  const found = candidates.find((d) => existsSync(join(d, 'index.html')));
  if (!found) {
    throw new Error(
      `no built MetaCubeXD in ${candidates.join(', ')}: set FAKEPROXY_METACUBEXD to its folder (see shared/fixtures/README.md)`,
    );
  }
  return found;
}

/** "55.6 MB" / "9.8 MB/s" / "0 B" as the dashboard prints them → bytes. */
function parseSize(text: string): number {
  const m = /([\d.]+)\s*([KMGT]?i?B)/.exec(text);
  if (!m) return Number.NaN;
  const unit = m[2] as string;
  const pow = { B: 0, K: 1, M: 2, G: 3, T: 4 }[unit[0] as 'B'] ?? 0;
  return Number(m[1]) * (unit.includes('i') ? 1024 : 1000) ** pow;
}

describe.skipIf(skip)('MetaCubeXD in headless Chromium against a running daemon', () => {
  let t: Topology;
  let a: { readonly text: string };
  let b: { readonly text: string };
  let browser: Browser;
  let page: Page;

  const shot = async (name: string) => {
    const p = join(ARTIFACTS, `${name}.png`);
    await page.screenshot({ path: p, fullPage: true });
    return p;
  };
  /** Text of the connection row whose host cell reads `host`, or '' while there is none. */
  const rowText = (host: string) =>
    page.evaluate((h) => {
      for (const tr of document.querySelectorAll('tr.conn-data-row')) {
        if (tr.querySelector('.conn-primary')?.textContent?.trim() === h) return (tr as HTMLElement).innerText;
      }
      return '';
    }, host);
  /** The row's "∑ ↓55.6 MB · ↑91 B" download figure in bytes, waiting until it exceeds `above`. */
  const waitDownloadAbove = async (host: string, above: number): Promise<number> => {
    const h = await page.waitForFunction(
      (hostName, min) => {
        for (const tr of document.querySelectorAll('tr.conn-data-row')) {
          if (tr.querySelector('.conn-primary')?.textContent?.trim() !== hostName) continue;
          const m = /∑ ↓([\d.]+\s*[KMGT]?i?B)/.exec((tr as HTMLElement).innerText);
          if (!m) return false;
          const units: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KiB: 1024, MiB: 1 << 20 };
          const [, num, unit] = /([\d.]+)\s*(\S+)/.exec(m[1] as string) as unknown as [string, string, string];
          const v = Number(num) * (units[unit] ?? Number.NaN);
          return v > min ? v : false;
        }
        return false;
      },
      { timeout: UI_TIMEOUT, polling: 250 },
      host,
      above,
    );
    return (await h.jsonValue()) as number;
  };
  const slowDownload = (
    host: string,
  ): { curl: ChildProcess; out: { readonly text: string }; exited: Promise<number | null> } => {
    // Rate-limited so it is still running while the page is looked at.
    const curl = t.client.spawn('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '--limit-rate',
      '1M',
      '--max-time',
      '120',
      `http://${host}:${HTTP_PORT}/big?mib=512`,
    ]);
    const out = capture(curl);
    const exited = new Promise<number | null>((r) => curl.once('exit', (c) => r(c)));
    return { curl, out, exited };
  };

  beforeAll(async () => {
    const ui = dashboardDir();
    mkdirSync(ARTIFACTS, { recursive: true });
    console.log(`dashboard screenshots: ${ARTIFACTS}`);
    t = await createTopology();
    let cfg: string;
    ({ a, b, cfg } = await startPickProxies(t, 'dashboard.yaml'));
    const d = await t.startDaemon(['--config', cfg, '--controller', '127.0.0.1:9090', '--secret', SECRET, '--ui', ui]);
    await d.waitFor(/controller http:\/\/127\.0\.0\.1:9090 \(secret set\)/);

    // Chromium inside the client namespace: a wrapper execs it there, and
    // puppeteer speaks CDP over inherited pipe fds (no port to cross namespaces).
    const wrapper = join(t.tmp, 'chromium-in-netns');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${t.client.name} /usr/bin/chromium "$@"\n`);
    chmodSync(wrapper, 0o755);
    browser = await puppeteer.launch({
      executablePath: wrapper,
      pipe: true,
      headless: true,
      userDataDir: join(t.tmp, 'chromium-profile'),
      // Root needs --no-sandbox; /dev/shm is small in containers.
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
      defaultViewport: { width: 1400, height: 900 },
      protocolTimeout: 120_000,
    });
    page = await browser.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await t?.destroy();
  });

  it('logs in through its setup page with the secret', async () => {
    await page.goto(`${CONTROLLER}/ui/`);
    await page.waitForSelector('#url');
    // The field suggests this address; set it the way a person would anyway.
    await page.click('#url', { clickCount: 3 });
    await page.keyboard.press('Backspace');
    await page.type('#url', CONTROLLER);
    await page.type('#secret', SECRET);
    await shot('1-setup');
    await page.click('form button[type=submit]');
    await page.waitForFunction(() => location.hash.startsWith('#/overview'), { polling: 250 });
    await page.waitForFunction((c) => document.body.innerText.includes(c), { polling: 250 }, CONTROLLER);
    await shot('2-overview-idle');
  }, 120_000);

  it('lists a curl download by host with growing bytes, graphs it, and its close button resets curl', async () => {
    const dl = slowDownload('origin.test');
    // A second, idle connection (to the echo server) stays open throughout:
    // MetaCubeXD ignores a snapshot with no connections at all (mihomo sends
    // null then), so the closed row can only be seen to leave next to another.
    const idle = t.client.spawn('socat', ['-', `TCP:echo.test:${ECHO_PORT}`]);
    try {
      // Overview during the download: the Download card and the Traffic graph's scale are above zero.
      await page.goto(`${CONTROLLER}/ui/#/overview`);
      const speed = await page.waitForFunction(
        () => {
          const txt = document.body.innerText;
          const m = /Download\n([\d.]+)\s*([KMG]?B)\/s/.exec(txt);
          return m && Number(m[1]) > 0 ? `${m[1]} ${m[2]}/s` : false;
        },
        { polling: 250 },
      );
      expect(parseSize((await speed.jsonValue()) as string)).toBeGreaterThan(0);
      const scale = await page.waitForFunction(
        () => {
          const svg = [...document.querySelectorAll('svg.highcharts-root')].find(
            (s) => s.querySelector('.highcharts-title')?.textContent === 'Traffic',
          );
          if (!svg) return false;
          const labels = [...svg.querySelectorAll('.highcharts-yaxis-labels text')].map((x) => x.textContent ?? '');
          return labels.some((l) => /^[\d.]+\s*[KMG]?B$/.test(l) && !/^0\s*B$/.test(l)) ? labels : false;
        },
        { polling: 250 },
      );
      const labels = (await scale.jsonValue()) as string[];
      expect(Math.max(...labels.map(parseSize).filter(Number.isFinite))).toBeGreaterThan(0);
      await shot('3-overview-traffic');

      // Connections: the row names the host behind the fake IP, its rule and chain; its bytes grow.
      await page.goto(`${CONTROLLER}/ui/#/connections`);
      const first = await waitDownloadAbove(`origin.test:${HTTP_PORT}`, 0);
      const row = await rowText(`origin.test:${HTTP_PORT}`);
      expect(row).toContain('DomainSuffix : origin.test');
      expect(row).toContain('pick → a');
      const later = await waitDownloadAbove(`origin.test:${HTTP_PORT}`, first);
      expect(later).toBeGreaterThan(first);
      await page.waitForFunction(
        (h) =>
          [...document.querySelectorAll('tr.conn-data-row .conn-primary')].some((e) => e.textContent?.trim() === h),
        { polling: 250 },
        `echo.test:${ECHO_PORT}`,
      );
      await shot('4-connections');

      // The close button on that row: curl sees a reset ("Connection reset by peer", exit 56).
      await page.evaluate(() => {
        for (const tr of document.querySelectorAll('tr.conn-data-row')) {
          if (tr.querySelector('.conn-primary')?.textContent?.trim() === 'origin.test:8080') {
            (tr.querySelector('button.conn-close-btn') as HTMLButtonElement).click();
          }
        }
      });
      expect(await dl.exited).toBe(56);
      expect(dl.out.text).toMatch(/reset/i);
      await page.waitForFunction(
        () =>
          ![...document.querySelectorAll('tr.conn-data-row .conn-primary')].some(
            (e) => e.textContent?.trim() === 'origin.test:8080',
          ),
        { polling: 250 },
      );
      await shot('5-connections-closed');
      expect(await rowText(`echo.test:${ECHO_PORT}`)).toMatch(/Match/);
    } finally {
      dl.curl.kill('SIGKILL');
      idle.kill('SIGKILL');
    }
  }, 180_000);

  it('a click on b in the select group sends the next connection through b (its log)', async () => {
    const fetchOnce = (host: string) =>
      t.client.exec('curl', ['-sS', '--max-time', '20', `http://${host}:${HTTP_PORT}/hello`], { timeoutMs: 30_000 });
    expect((await fetchOnce('before.origin.test')).code).toBe(0);
    expect(a.text).toMatch(/before\.origin\.test/);

    await page.goto(`${CONTROLLER}/ui/#/proxies`);
    // The group card shows "Selector → a"; expand it and click proxy b.
    // Locators re-query and retry: the list re-renders as snapshots arrive.
    await page.locator('::-p-xpath(//span[normalize-space(.)="pick"])').click();
    await page.waitForSelector('[role="button"][aria-label="b"][aria-pressed="false"]');
    await shot('6-proxies-open');
    await page.locator('[role="button"][aria-label="b"][aria-pressed="false"]').click();
    // The card of b is now the pressed one, and the group's badge reads "Selector → b".
    await page.waitForSelector('[role="button"][aria-label="b"][aria-pressed="true"]');
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('.badge')].some((e) =>
          /^Selector\s*b$/.test((e as HTMLElement).innerText.trim()),
        ),
      { polling: 250 },
    );
    await shot('7-proxies-switched');
    await t.daemon?.waitFor(/group pick: selected b \(controller\)/);

    expect((await fetchOnce('after.origin.test')).code).toBe(0);
    expect(b.text).toMatch(/after\.origin\.test/);
    expect(a.text).not.toMatch(/after\.origin\.test/);
  }, 120_000);
});
