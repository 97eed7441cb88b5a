/**
 * The web view (src/ui/), in a real browser: Debian's chromium driven by puppeteer-core, on the demo cluster
 * (clusters/local.yaml). Overview live, kill -9 followed without a reload, the replica view's log, actions
 * refused without the control secret and done with it. Then, without a browser, a log stream that does not
 * read never holds a worker back.
 *
 * UI_SCREENSHOTS=DIR also saves the overview and a replica view (desktop and phone width) into DIR.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dynsup, ROOT, tempCluster, waitFor, type StatusJson } from '../helpers/cluster.js';
import { installFakeNvidiaSmi } from '../helpers/fake-nvidia-smi.js';

const CHROMIUM = (() => {
  try {
    return execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error('chromium is not installed: run .ci/install.sh as root (Debian package chromium)');
  }
})();
const SHOTS = process.env.UI_SCREENSHOTS;

async function launch(): Promise<Browser> {
  // --no-sandbox: the suite runs as root, where Chromium's sandbox refuses to start.
  return puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
}

/** Wait in the page for a DOM condition (polled by the browser; the deadline only stops a hung test). */
async function until(page: Page, what: string, fn: string, timeout = 60_000): Promise<void> {
  await page.waitForFunction(fn, { timeout, polling: 100 }).catch((err: Error) => {
    throw new Error(`timed out waiting for ${what}: ${err.message}`);
  });
}

// Each test's own waits have deadlines (60 s each); the test's bound leaves them room to say which one hung.
describe('web view on the demo cluster (chromium)', { timeout: 240_000 }, () => {
  const stateDir = mkdtempSync(join(tmpdir(), 'dynsup-ui-'));
  const file = join(ROOT, 'clusters/local.yaml');
  const args = ['--state-dir', stateDir];
  const url = 'http://127.0.0.1:9464/';
  let browser: Browser | undefined;
  const statusNow = async (): Promise<StatusJson> => JSON.parse((await dynsup(['status', file, ...args, '--json'])).stdout) as StatusJson;
  const replica = async (name: string) => (await statusNow()).replicas.find((r) => r.name === name)!;

  beforeAll(async () => {
    const up = await dynsup(['up', '-d', file, ...args, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    browser = await launch();
  });

  afterAll(async () => {
    await browser?.close();
    await dynsup(['down', file, ...args]);
  });

  it('overview: 5 replicas ready, the control plane, the graph frontend → decode → prefill; the page loads nothing from elsewhere', async () => {
    const page = await browser!.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    const bytes = new Map<string, number>();
    const urls = new Map<string, string>();
    cdp.on('Network.requestWillBeSent', (e) => urls.set(e.requestId, e.request.url));
    cdp.on('Network.loadingFinished', (e) => bytes.set(e.requestId, e.encodedDataLength));
    await page.goto(url, { waitUntil: 'load' });
    await until(page, '5 replicas ready', `document.querySelectorAll('.group .tile[data-state="ready"]').length === 5`);
    await until(page, 'nats and etcd ready', `document.querySelectorAll('.cp .tile[data-state="ready"]').length === 2`);
    const groups = await page.$$eval('.graph .col', (cols) => cols.map((c) => [...c.querySelectorAll('.group h2')].map((h) => h.firstChild!.textContent)));
    expect(groups).toEqual([['frontend'], ['decode'], ['prefill']]);
    expect(await page.$eval('#summary', (e) => e.textContent)).toContain('5 ready');
    // Everything came from the supervisor; the live stream stays open, so it is not among the finished loads.
    expect([...urls.values()].filter((u) => !u.startsWith(url) && !u.startsWith('data:'))).toEqual([]);
    const firstLoad = [...bytes.values()].reduce((a, b) => a + b, 0);
    process.stderr.write(`web view first load: ${bytes.size} responses, ${(firstLoad / 1024).toFixed(1)} KB transferred\n`);
    expect(firstLoad).toBeGreaterThan(0);
    expect(firstLoad).toBeLessThan(64 * 1024); // the budget: a small page, no framework
    // The control secret is nowhere in what a read-only page gets.
    const secret = (JSON.parse(readFileSync(join(stateDir, 'run/credentials.json'), 'utf8')) as { controlKey: string }).controlKey;
    expect(await page.content()).not.toContain(secret);
    await page.close();
  });

  it("kill -9 of decode-0: its tile goes through backoff to ready with restarts 1, and its replica view shows the new run's lines, without a reload", async () => {
    const overview = await browser!.newPage();
    await overview.goto(url);
    await until(overview, '5 replicas ready', `document.querySelectorAll('.group .tile[data-state="ready"]').length === 5`);
    // Every state the tile shows, and a mark that a reload would wipe.
    await overview.evaluate(() => {
      const w = window as unknown as { seen: string[]; mark: number };
      w.mark = 42;
      w.seen = [];
      const tile = document.getElementById('tile-decode-0')!;
      new MutationObserver(() => w.seen.push(tile.dataset.state!)).observe(tile, { attributes: true, attributeFilter: ['data-state', 'data-restarts'] });
    });
    // In a window of its own: a tab hidden behind another stops streaming (see 'many tabs' below).
    const view = await (await browser!.createBrowserContext()).newPage();
    await view.goto(url);
    await until(view, 'the overview', `document.getElementById('tile-decode-0') !== null`);
    // Keyboard: the tile is a link; Enter on it opens the replica view.
    await view.focus('#tile-decode-0');
    await view.keyboard.press('Enter');
    await until(view, 'the replica view of decode-0', `location.hash === '#/replica/decode-0' && document.querySelectorAll('#log .ln').length > 0`);
    const before = await replica('decode-0');
    expect(await view.$eval('#log', (e) => e.textContent)).toContain(`"pid":${before.pid}`);

    process.kill(before.pid!, 'SIGKILL');
    await until(
      overview,
      'decode-0 ready again with restarts 1',
      `(() => { const t = document.getElementById('tile-decode-0'); return t.dataset.state === 'ready' && t.dataset.restarts === '1'; })()`,
    );
    const seen = await overview.evaluate(() => (window as unknown as { seen: string[] }).seen);
    expect(seen).toContain('backoff');
    expect(seen.indexOf('backoff')).toBeLessThan(seen.lastIndexOf('ready'));
    expect(await overview.evaluate(() => (window as unknown as { mark: number }).mark)).toBe(42);
    expect(await overview.$eval('#tile-decode-0', (e) => e.textContent)).toContain('last exit SIGKILL');

    const after = await replica('decode-0');
    expect(after.pid).not.toBe(before.pid);
    // The open replica view followed: the new run's start-up line (with its pid) arrived live.
    await until(view, 'the new run in the log view', `document.getElementById('log').textContent.includes('"pid":${after.pid}')`);
    await until(
      view,
      'the restart in the history',
      `[...document.querySelectorAll('#history tr')].some((r) => r.dataset.kind === 'exited' && r.textContent.includes('SIGKILL'))`,
    );
    await until(
      view,
      'the badge and restarts',
      `document.getElementById('state').dataset.state === 'ready' && document.querySelector('[data-field="restarts"]').textContent === '1'`,
    );
    if (SHOTS) {
      await overview.setViewport({ width: 1280, height: 860 });
      await overview.screenshot({ path: join(SHOTS, 'ui-overview.png') });
      await view.setViewport({ width: 1280, height: 860 });
      await view.screenshot({ path: join(SHOTS, 'ui-replica.png'), fullPage: true });
    }
    // The events timeline, filtered to restarts: the kill and the restart, newest first. (Clicks need the tab
    // in front: Chromium defers a background tab's scrolling into view, and puppeteer waits for it.)
    await overview.bringToFront();
    await overview.click('a[data-nav="events"]');
    await until(overview, 'the events view', `document.getElementById('filter') !== null`);
    await overview.select('#filter', 'restarts');
    await until(
      overview,
      'the kill in the timeline',
      `[...document.querySelectorAll('#events .ev')].some((e) => e.dataset.kind === 'exited' && e.textContent.includes('decode-0 killed by SIGKILL'))`,
    );
    const kinds = await overview.$$eval('#events .ev', (l) => l.map((e) => (e as HTMLElement).dataset.kind));
    expect(new Set(kinds)).toEqual(new Set(['exited', 'restarting']));
    expect(kinds.indexOf('restarting')).toBeLessThan(kinds.lastIndexOf('exited')); // newest first
    await overview.close();
    await view.close();
  });

  it('paused, the log view holds new lines and shows them on resume', async () => {
    const page = await browser!.newPage();
    await page.goto(`${url}#/replica/decode-1`);
    await until(page, 'the log', `document.querySelectorAll('#log .ln').length > 0`);
    await page.click('#pause');
    const shown = await page.$$eval('#log .ln', (l) => l.length);
    // New lines for decode-1: completions through the frontend until one lands on it (queue group).
    await waitFor(
      'decode-1 logged a request while paused',
      async () => {
        await fetch('http://127.0.0.1:8000/v1/completions', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'demo', prompt: 'paused', max_tokens: 2 }),
        });
        return /paused \(\d+ new\)/.test(await page.$eval('#log-info', (e) => e.textContent ?? ''));
      },
      60_000,
      200,
    );
    expect(await page.$$eval('#log .ln', (l) => l.length)).toBe(shown);
    await page.click('#pause');
    await until(
      page,
      'the held lines shown',
      `document.querySelectorAll('#log .ln').length > ${shown} && document.getElementById('pause').getAttribute('aria-pressed') === 'false'`,
    );
    expect(await page.$eval('#log', (e) => e.textContent)).toMatch(/decode-1 decode \{/);
    await page.close();
  });

  it('restart without credentials is refused and says why; with the control secret it works', async () => {
    const page = await browser!.newPage();
    await page.goto(`${url}#/replica/decode-0`);
    await until(page, 'the replica view', `document.getElementById('state')?.dataset.state === 'ready'`);
    const before = await replica('decode-0');
    expect(await page.$eval('#auth-state', (e) => e.textContent)).toBe('read-only');

    await page.click('button[data-op="restart"]');
    await until(page, 'the refusal', `document.getElementById('notice').classList.contains('error')`);
    const refusal = await page.$eval('#notice', (e) => e.textContent ?? '');
    expect(refusal).toMatch(/^restart decode-0: read-only: no credentials given/);
    expect(refusal).toContain('credentials.json');
    expect((await replica('decode-0')).pid).toBe(before.pid);

    // A wrong secret is not kept: still read-only, and the page says so.
    await page.type('#secret', 'not-the-secret');
    await page.keyboard.press('Enter');
    await until(page, 'wrong credentials', `document.getElementById('notice').textContent.includes('wrong credentials')`);
    expect(await page.$eval('#auth-state', (e) => e.textContent)).toBe('read-only');

    const creds = readFileSync(join(stateDir, 'run/credentials.json'), 'utf8');
    await page.$eval('#secret', (e) => ((e as HTMLInputElement).value = ''));
    await page.type('#secret', (JSON.parse(creds) as { controlKey: string }).controlKey);
    await page.keyboard.press('Enter');
    await until(page, 'authorised', `document.getElementById('auth-state')?.textContent === 'authorised'`);
    await page.click('button[data-op="restart"]');
    await until(page, 'the restart done', `document.getElementById('notice').textContent === 'restart decode-0: done (decode-0)'`);
    const after = await replica('decode-0');
    expect(after.pid).not.toBe(before.pid);
    await until(page, 'the new pid shown', `document.querySelector('[data-field="pid"]').textContent === '${after.pid}'`);
    // Kept for the tab's session: a reload stays authorised.
    await page.reload();
    await until(page, 'still authorised', `document.getElementById('auth-state')?.textContent === 'authorised'`);

    // A group's rolling restart (dynsup restart GROUP --rolling): every replica replaced, one at a time.
    await page.goto(url);
    await until(page, 'the overview', `document.querySelectorAll('.group .tile[data-state="ready"]').length === 5`);
    const decode = (await statusNow()).replicas.filter((r) => r.group === 'decode').map((r) => r.pid);
    await page.click('#group-decode button[data-op="rolling"]');
    await until(
      page,
      'the rolling restart done',
      `document.getElementById('notice').textContent === 'rolling restart decode: done (decode-0, decode-1)'`,
      120_000,
    );
    const rolled = (await statusNow()).replicas.filter((r) => r.group === 'decode');
    for (const [i, r] of rolled.entries()) expect(r.pid).not.toBe(decode[i]);
    await until(
      page,
      'the events timeline has it',
      `[...document.querySelectorAll('#recent .ev')].some((e) => e.textContent.includes('rolling restart of decode'))`,
    );
    await page.close();
  });

  it('many tabs in one browser: hidden tabs hold no connection, so an eighth tab still loads; back in front, a tab is live again', async () => {
    // A browser keeps at most 6 HTTP/1.1 connections per host, and an open stream holds one.
    const tabs: Page[] = [];
    for (let i = 0; i < 8; i++) {
      const tab = await browser!.newPage();
      await tab.goto(i % 2 ? `${url}#/replica/decode-1` : url);
      await until(tab, `tab ${i} live`, `document.getElementById('conn').textContent === 'live' && document.querySelectorAll('.tile, #log .ln').length > 0`);
      tabs.push(tab);
    }
    expect(await tabs[0]!.$eval('#conn', (e) => e.textContent)).toBe('paused (tab hidden)');
    await tabs[1]!.bringToFront();
    await until(
      tabs[1]!,
      'the replica view live again, its log reloaded',
      `document.getElementById('conn').textContent === 'live' && document.querySelectorAll('#log .ln').length > 0`,
    );
    expect(await tabs[7]!.$eval('#conn', (e) => e.textContent)).toBe('paused (tab hidden)');
    for (const t of tabs) await t.close();
  });

  it('phone width: one column, every group and tile reachable', async () => {
    const page = await browser!.newPage();
    await page.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true });
    await page.goto(url);
    await until(page, '5 replicas ready', `document.querySelectorAll('.group .tile[data-state="ready"]').length >= 5`);
    // Nothing wider than the screen: no sideways scrolling on a phone.
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    const lefts = await page.$$eval('.graph .col', (cols) => cols.map((c) => Math.round(c.getBoundingClientRect().left)));
    expect(new Set(lefts).size).toBe(1); // stacked
    if (SHOTS) await page.screenshot({ path: join(SHOTS, 'ui-phone.png'), fullPage: true });
    await page.close();
  });
});

describe('web view with GPU telemetry (fake nvidia-smi)', { timeout: 180_000 }, () => {
  it("tiles and the replica view show each replica's GPU memory and utilisation; the log view renders colours and shows other escapes as text", async () => {
    const c = await tempCluster(`
nodes: { local: { transport: local, gpus: 2 } }
workers:
  g:
    # A coloured line, and a title-setting escape sequence that must arrive as text.
    command: "printf '\\\\033[1;31mred alert\\\\033[0m plain \\\\033]0;pwned\\\\007\\\\n'; exec sleep 600"
    replicas: 2
    gpus: 1
`);
    const smi = installFakeNvidiaSmi(join(c.dir, 'smi'));
    smi.setState({
      gpus: [
        { index: 0, uuid: 'GPU-aaaa', memoryUsedMiB: 4096, memoryTotalMiB: 81920, utilizationPct: 50 },
        { index: 1, uuid: 'GPU-bbbb', memoryUsedMiB: 512, memoryTotalMiB: 81920, utilizationPct: 7 },
      ],
      processes: [],
    });
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60'], { env: { ...process.env, PATH: `${smi.binDir}:${process.env.PATH}` } });
    expect(up.code, up.stderr).toBe(0);
    const browser = await launch();
    try {
      const page = await browser.newPage();
      await page.goto(`http://127.0.0.1:${c.metricsPort}/`);
      await until(page, 'GPU memory on both tiles', `document.querySelectorAll('.tile .t-gpu').length === 2`);
      expect(await page.$eval('#tile-g-0 .t-gpu', (e) => e.textContent)).toBe('gpu mem 4.0 GiB / 80.0 GiB · 50%');
      expect(await page.$eval('#tile-g-1 .t-gpu', (e) => e.textContent)).toBe('gpu mem 512 MiB / 80.0 GiB · 7%');
      // Live: a new sample reaches the open page.
      smi.setState({
        gpus: [
          { index: 0, uuid: 'GPU-aaaa', memoryUsedMiB: 8192, memoryTotalMiB: 81920, utilizationPct: 99 },
          { index: 1, uuid: 'GPU-bbbb', memoryUsedMiB: 512, memoryTotalMiB: 81920, utilizationPct: 7 },
        ],
        processes: [],
      });
      await until(page, 'the new sample', `document.querySelector('#tile-g-0 .t-gpu').textContent === 'gpu mem 8.0 GiB / 80.0 GiB · 99%'`);
      await page.click('#tile-g-0');
      await until(page, 'the replica view', `document.querySelector('[data-field="gpu memory"]')?.textContent.startsWith('8.0 GiB / 80.0 GiB · 99%')`);
      // The log with its ANSI colours rendered; the other escape shown, not obeyed.
      await until(page, 'the coloured line', `document.querySelector('#log span.f1.bo')?.textContent === 'red alert'`);
      expect(await page.$eval('#log .ln', (e) => e.textContent)).toBe('red alert plain \\e]0;pwned\\a');
      expect(await page.title()).not.toContain('pwned');
    } finally {
      await browser.close();
      await dynsup(['down', c.file]);
    }
  });
});

/** Read an SSE stream's raw text; `paused` holds the socket unread (its buffers fill). */
function openStream(port: number, path: string): { text: () => string; resume: () => void; close: () => void; ready: Promise<void> } {
  let text = '';
  let res: import('node:http').IncomingMessage | undefined;
  const req = request({ host: '127.0.0.1', port, path });
  const ready = new Promise<void>((resolve, reject) => {
    req.on('response', (r) => {
      res = r;
      r.on('data', (d: Buffer) => (text += d.toString()));
      resolve();
    });
    req.on('error', reject);
  });
  req.end();
  return {
    text: () => text,
    resume: () => res?.resume(),
    close: () => req.destroy(),
    ready: ready.then(() => {
      // Read the headers and the history, then stop reading.
      res!.pause();
    }),
  };
}

describe('web view streams', { timeout: 180_000 }, () => {
  it('a log stream that does not read never holds the worker back: every line reaches the file, the stream says what it skipped', async () => {
    const LINES = 200_000;
    const c = await tempCluster(`
nodes: { local: { transport: local } }
workers:
  chatty:
    command: [node, DIR/chatty.cjs]
    restart: { policy: never }
`);
    // Prints once DIR/go exists (the stream is open by then), as fast as its stdout takes it, then exits.
    writeFileSync(
      join(c.dir, 'chatty.cjs'),
      `const fs = require('fs'); let i = 0;
function w() { while (i < ${LINES}) { if (!process.stdout.write('line ' + ++i + ' ' + 'x'.repeat(80) + '\\n')) return process.stdout.once('drain', w); } process.exit(0); }
(function wait() { if (fs.existsSync(${JSON.stringify(join(c.dir, 'go'))})) w(); else setTimeout(wait, 50); })();
`,
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    try {
      // The stream is opened, then never read while the worker prints ~17 MB.
      const stream = openStream(c.metricsPort, '/api/logs/chatty-0?n=0');
      await stream.ready;
      writeFileSync(join(c.dir, 'go'), '');
      const logFile = join(c.dir, 'state/logs/chatty-0.log');
      await waitFor(
        'every line in the log file',
        () => {
          try {
            return (
              readFileSync(logFile, 'utf8')
                .split('\n')
                .filter((l) => l.startsWith(`line ${LINES} `)).length >= 1
            );
          } catch {
            return false;
          }
        },
        120_000,
        200,
      );
      const st = JSON.parse((await dynsup(['status', c.file, '--json'])).stdout) as StatusJson;
      expect(st.replicas[0]!.state).toBe('stopped');
      stream.resume();
      await waitFor('the skipped marker', () => /event: skipped\ndata: \{"count":\d+\}/.test(stream.text()), 60_000, 100);
      const skipped = Number(/event: skipped\ndata: \{"count":(\d+)\}/.exec(stream.text())![1]);
      expect(skipped).toBeGreaterThan(0);
      stream.close();
    } finally {
      await dynsup(['down', c.file]);
    }
  });

  it("a replica's environment as the page gets it: secret-looking names masked, also for values dynsup made (the etcd TLS client key)", async () => {
    const c = await tempCluster(
      `
nodes: { local: { transport: local } }
workers:
  w:
    command: "exec sleep 600"
    env: { SHOWN: "plain value" }
`,
      { controlPlane: true, etcd: 'tls: true' },
    );
    const up = await dynsup(['up', '-d', c.file, '--timeout', '90']);
    expect(up.code, up.stderr).toBe(0);
    try {
      const res = await fetch(`http://127.0.0.1:${c.metricsPort}/api/replica/w-0`);
      expect(res.status).toBe(200);
      const text = await res.text();
      const env = (JSON.parse(text) as { env: Record<string, string> }).env;
      expect(env.SHOWN).toBe('plain value');
      expect(env.ETCD_ENDPOINTS).toMatch(/^https:\/\//);
      expect(env.ETCD_AUTH_CLIENT_KEY).toBe('***');
      const key = readFileSync(join(c.dir, 'state/tls/etcd/client.key'), 'utf8');
      const body = key.split('\n').find((l) => l.length > 40)!;
      expect(body).toBeDefined();
      expect(text).not.toContain(body);
    } finally {
      await dynsup(['down', c.file]);
    }
  });

  it('actions over HTTP need the control secret; the API answers without it only what the page shows', async () => {
    const c = await tempCluster(`
nodes: { local: { transport: local } }
workers:
  w:
    command: "echo hi; exec sleep 600"
`);
    const up = await dynsup(['up', '-d', c.file, '--timeout', '60']);
    expect(up.code, up.stderr).toBe(0);
    try {
      const base = `http://127.0.0.1:${c.metricsPort}`;
      const secret = (JSON.parse(readFileSync(join(c.dir, 'state/run/credentials.json'), 'utf8')) as { controlKey: string }).controlKey;
      const act = (headers: Record<string, string>, body: unknown) =>
        fetch(`${base}/api/action`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
      const none = await act({}, { op: 'stop', target: 'w-0' });
      expect(none.status).toBe(401);
      expect(((await none.json()) as { error: string }).error).toMatch(/read-only/);
      const wrong = await act({ 'x-dynsup-secret': 'nope' }, { op: 'stop', target: 'w-0' });
      expect(wrong.status).toBe(403);
      // The NATS password (workers hold it with workerCredentials) is not the control key.
      const natsPassword = (JSON.parse(readFileSync(join(c.dir, 'state/run/credentials.json'), 'utf8')) as { natsPassword: string }).natsPassword;
      expect((await act({ 'x-dynsup-secret': natsPassword }, { op: 'stop', target: 'w-0' })).status).toBe(403);
      expect(JSON.parse((await dynsup(['status', c.file, '--json'])).stdout).replicas[0].state).toBe('running');
      // Only the page's operations: never down or scale, even with the secret.
      const down = await act({ 'x-dynsup-secret': secret }, { op: 'down', target: 'w-0' });
      expect(down.status).toBe(400);
      const stop = await act({ 'x-dynsup-secret': secret }, { op: 'stop', target: 'w-0' });
      expect(stop.status).toBe(200);
      expect(await stop.json()).toEqual({ ok: true, result: ['w-0'] });
      expect(JSON.parse((await dynsup(['status', c.file, '--json'])).stdout).replicas[0].state).toBe('stopped');
      // Read-only views: the snapshot and metrics side by side on the one server.
      const snap = (await (await fetch(`${base}/api/status`)).json()) as { replicas: { name: string }[] };
      expect(snap.replicas.map((r) => r.name)).toEqual(['w-0']);
      expect(await (await fetch(`${base}/metrics`)).text()).toContain('dynsup_replica_up');
      expect(JSON.stringify(snap)).not.toContain(secret);
      const page = await fetch(base, { headers: { 'accept-encoding': 'gzip' } });
      expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    } finally {
      await dynsup(['down', c.file]);
    }
  });
});
