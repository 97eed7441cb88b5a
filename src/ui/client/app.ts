/**
 * The dynsup web view (bundled into dist/ui/static/app.js; served by the supervisor, src/ui/server.ts).
 * Plain DOM, no framework. Live by server-sent events: /api/stream (status and events) and, on a replica's
 * page, /api/logs/NAME. Nothing polls: the only timer redraws uptimes once a second from what it has.
 * Text from the cluster is only ever set as text (textContent), never parsed as HTML.
 */
import { parseSgr, type Style } from './sgr.js';
import type { Delta, ExitInfo, ReplicaDetail, ReplicaStatus, Snapshot, TimelineEvent } from '../wire.js';

const SECRET_KEY = 'dynsup.secret';
const SECRET_HEADER = 'x-dynsup-secret';
const MAX_EVENTS = 500;
const MAX_LOG_LINES = 2000;
const MAX_HELD = 5000;

// ---------------------------------------------------------------------------------------------------------
// State

let info: Pick<Snapshot, 'cluster' | 'head' | 'groups' | 'actions'> | null = null;
const replicas = new Map<string, ReplicaStatus>();
const services = new Map<string, ReplicaStatus>();
let events: TimelineEvent[] = [];
/** Server clock minus ours: uptimes are computed against the supervisor's clock. */
let skew = 0;
let live = false;
/** Closes what the current view opened (its log stream). */
let leaveView: (() => void) | null = null;
/** Updates the current view after status changes / new events. */
let refreshView: ((changed: readonly string[], fresh: readonly TimelineEvent[]) => void) | null = null;

const $ = (id: string): HTMLElement => document.getElementById(id)!;

// ---------------------------------------------------------------------------------------------------------
// DOM helpers

type Child = Node | string | null | undefined | false;
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number | boolean | undefined> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === 'class') el.className = String(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

function duration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const hr = Math.floor(m / 60);
  if (hr < 48) return `${hr}h${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(hr / 24)}d${hr % 24}h`;
}

const serverNow = (): number => Date.now() + skew;
const clock = (t: number): string => new Date(t - skew).toLocaleTimeString([], { hour12: false });

function exitText(e: ExitInfo | null): string {
  if (!e) return '-';
  const how = e.signal ?? `code ${e.code}`;
  return e.reason ? `${how} (${e.reason})` : how;
}

/** GPU memory and utilisation of a replica, when its node reports telemetry: "5.2 / 80.0 GiB · 93%". */
function gpuText(r: ReplicaStatus): string | undefined {
  const g = r.gpu;
  if (!g || g.memoryUsedMiB === null) return undefined;
  return `${mib(g.memoryUsedMiB)}${g.memoryTotalMiB !== null ? ` / ${mib(g.memoryTotalMiB)}` : ''}${g.utilizationPct !== null ? ` · ${g.utilizationPct}%` : ''}`;
}

const mib = (v: number): string => (v >= 1024 ? `${(v / 1024).toFixed(1)} GiB` : `${Math.round(v)} MiB`);

function uptimeSpan(r: ReplicaStatus): HTMLElement {
  const up = r.startedAt && r.pid && (r.state === 'running' || r.state === 'ready');
  return h('span', { class: 'uptime', 'data-started': up ? r.startedAt! : undefined }, up ? duration(serverNow() - r.startedAt!) : '-');
}

function tickUptimes(): void {
  for (const el of document.querySelectorAll<HTMLElement>('.uptime[data-started]')) el.textContent = duration(serverNow() - Number(el.dataset.started));
}

// ---------------------------------------------------------------------------------------------------------
// Credentials and actions

function secret(): string | null {
  try {
    return sessionStorage.getItem(SECRET_KEY);
  } catch {
    return null;
  }
}

function notice(text: string, kind: 'ok' | 'error' | 'pending'): void {
  const n = $('notice');
  n.className = `notice ${kind}`;
  n.textContent = text;
}

/** The secret as typed: the controlKey itself, or credentials.json pasted whole. */
function secretFrom(input: string): string {
  const t = input.trim();
  if (t.startsWith('{')) {
    try {
      const c = JSON.parse(t) as { controlKey?: unknown };
      if (typeof c.controlKey === 'string') return c.controlKey;
    } catch {
      /* not JSON after all: taken as typed */
    }
  }
  return t;
}

function renderCreds(): void {
  const box = $('creds');
  box.replaceChildren();
  if (secret()) {
    const forget = h('button', { type: 'button', id: 'forget' }, 'forget credentials');
    forget.addEventListener('click', () => {
      sessionStorage.removeItem(SECRET_KEY);
      renderCreds();
      notice('credentials forgotten: the page is read-only', 'ok');
    });
    box.append(h('span', { class: 'badge ok', id: 'auth-state' }, 'authorised'), forget);
    return;
  }
  const input = h('input', { id: 'secret', type: 'password', autocomplete: 'off', spellcheck: 'false', placeholder: 'control secret' });
  const form = h(
    'form',
    { id: 'cred-form', class: 'cred-form' },
    h('label', { for: 'secret', class: 'sr' }, 'control secret (controlKey from credentials.json)'),
    input,
    h('button', { type: 'submit' }, 'use'),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const s = secretFrom(input.value);
    if (!s) return;
    void fetch('/api/auth', { method: 'POST', headers: { [SECRET_HEADER]: s } })
      .then(async (r) => {
        const body = (await r.json()) as { ok: boolean; error?: string };
        if (!body.ok) throw new Error(body.error ?? `HTTP ${r.status}`);
        sessionStorage.setItem(SECRET_KEY, s);
        renderCreds();
        notice('credentials accepted: actions enabled for this tab', 'ok');
      })
      .catch((err: Error) => notice(err.message, 'error'));
  });
  box.append(h('span', { class: 'badge ro', id: 'auth-state', title: "actions need the cluster's control secret" }, 'read-only'), form);
}

async function act(op: string, target: string, label = op): Promise<void> {
  const s = secret();
  notice(`${label} ${target}…`, 'pending');
  try {
    const r = await fetch('/api/action', {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(s ? { [SECRET_HEADER]: s } : {}) },
      body: JSON.stringify({ op, target }),
    });
    const body = (await r.json()) as { ok: boolean; result?: unknown; error?: string };
    if (body.ok) notice(`${label} ${target}: done${Array.isArray(body.result) ? ` (${body.result.join(', ')})` : ''}`, 'ok');
    else notice(`${label} ${target}: ${body.error ?? `HTTP ${r.status}`}`, 'error');
  } catch (err) {
    notice(`${label} ${target}: ${(err as Error).message}`, 'error');
  }
}

const LABELS: Readonly<Record<string, string>> = { rolling: 'rolling restart' };

function actions(target: string, what: string, kind: 'replica' | 'group'): HTMLElement {
  const ops = info?.actions[kind] ?? [];
  const box = h('div', { class: 'actions', role: 'group', 'aria-label': `actions on ${what}` });
  for (const op of ops) {
    const label = LABELS[op] ?? op;
    const b = h(
      'button',
      { type: 'button', 'data-op': op, 'data-target': target, title: secret() ? `${label} ${what}` : `${label} ${what} (needs the control secret)` },
      label,
    );
    b.addEventListener('click', () => void act(op, target, label));
    box.append(b);
  }
  return box;
}

// ---------------------------------------------------------------------------------------------------------
// Overview

function tile(r: ReplicaStatus): HTMLAnchorElement {
  const mem = gpuText(r);
  const a = h(
    'a',
    {
      class: `tile s-${r.state}`,
      id: `tile-${r.name}`,
      href: `#/replica/${encodeURIComponent(r.name)}`,
      'data-replica': r.name,
      'data-state': r.state,
      'data-restarts': r.restarts,
    },
    h('span', { class: 't-head' }, h('span', { class: 't-name' }, r.name), h('span', { class: 't-state' }, r.state)),
    h(
      'span',
      { class: 't-row' },
      `${r.ranks ? r.ranks.map((k) => k.node).join(' + ') : r.node}${r.gpus.length ? ` · gpu ${r.gpus.join(',')}${r.ranks ? ' each' : ''}` : ''}`,
    ),
    ...(r.ranks ?? []).map((k) => h('span', { class: `t-row t-rank s-${k.state}` }, `${k.name} ${k.node} ${k.state}${k.pid ? ` pid ${k.pid}` : ''}`)),
    h('span', { class: 't-row' }, `restarts ${r.restarts} · up `, uptimeSpan(r)),
    r.lastExit ? h('span', { class: 't-row' }, `last exit ${exitText(r.lastExit)}`) : null,
    mem !== undefined ? h('span', { class: 't-row t-gpu' }, `gpu mem ${mem}`) : null,
    r.message && (r.state === 'backoff' || r.state === 'failed' || r.state === 'stopped' || r.state === 'blocked' || r.state === 'starting')
      ? h('span', { class: 't-row t-msg' }, r.message)
      : null,
  );
  return a;
}

/** Replace a tile in place (keeps keyboard focus on it). */
function updateTile(r: ReplicaStatus): boolean {
  const old = document.getElementById(`tile-${r.name}`);
  if (!old) return false;
  const fresh = tile(r);
  old.className = fresh.className;
  for (const k of ['data-state', 'data-restarts']) old.setAttribute(k, fresh.getAttribute(k)!);
  old.replaceChildren(...fresh.childNodes);
  return true;
}

function eventRow(e: TimelineEvent, withReplica = true): HTMLElement {
  return h(
    'li',
    { class: `ev l-${e.level}`, 'data-kind': e.kind },
    h('time', { datetime: new Date(e.t).toISOString() }, clock(e.t)),
    h('span', { class: `k k-${e.kind}` }, e.kind),
    withReplica && e.replica ? h('a', { href: `#/replica/${encodeURIComponent(e.replica)}` }, e.replica) : null,
    h('span', { class: 'msg' }, e.msg),
  );
}

function renderOverview(main: HTMLElement): void {
  if (!info) return;
  const cp = h('section', { class: 'cp', 'aria-labelledby': 'cp-h' }, h('h2', { id: 'cp-h' }, 'control plane'));
  cp.append(h('div', { class: 'tiles' }, ...[...services.values()].map(tile)));
  const cols = Math.max(0, ...info.groups.map((g) => g.column)) + 1;
  const graph = h('div', { class: 'graph', 'aria-label': 'worker groups, in request order (each depends on the next)' });
  for (let c = 0; c < cols; c++) {
    if (c) graph.append(h('div', { class: 'arrow', 'aria-hidden': 'true' }, '→'));
    const col = h('div', { class: 'col' });
    for (const g of info.groups.filter((x) => x.column === c)) {
      const rs = [...replicas.values()].filter((r) => r.group === g.name);
      const ready = rs.filter((r) => r.state === 'ready' || r.state === 'running').length;
      col.append(
        h(
          'section',
          { class: 'group', id: `group-${g.name}`, 'aria-labelledby': `gh-${g.name}` },
          h('h2', { id: `gh-${g.name}` }, g.name, ' ', h('span', { class: 'muted' }, `${ready}/${rs.length} up${g.gpus ? ` · ${g.gpus} gpu each` : ''}`)),
          g.dependsOn.length ? h('p', { class: 'deps muted' }, `depends on ${g.dependsOn.join(', ')}`) : null,
          actions(g.name, `group ${g.name}`, 'group'),
          h('div', { class: 'tiles' }, ...rs.map(tile)),
        ),
      );
    }
    graph.append(col);
  }
  const counts = new Map<string, number>();
  for (const r of replicas.values()) counts.set(r.state, (counts.get(r.state) ?? 0) + 1);
  const summary = h(
    'p',
    { class: 'summary', id: 'summary' },
    `cluster ${info.cluster} on ${info.head}: ${replicas.size} replicas — `,
    ...[...counts].map(([s, n]) => h('span', { class: `sum s-${s}` }, `${n} ${s} `)),
  );
  const recent = h('ol', { class: 'events', id: 'recent' }, ...events.slice(0, 8).map((e) => eventRow(e)));
  main.replaceChildren(
    h('h1', {}, `cluster ${info.cluster}`),
    summary,
    cp,
    graph,
    h('section', { class: 'recent', 'aria-labelledby': 're-h' }, h('h2', { id: 're-h' }, 'recent events ', h('a', { href: '#/events' }, 'all')), recent),
  );
  refreshView = (changed, fresh) => {
    let rebuild = false;
    for (const n of changed) {
      const r = replicas.get(n) ?? services.get(n);
      if (!r || !updateTile(r)) rebuild = true;
    }
    if (rebuild) return rerender();
    if (changed.length) {
      const c2 = new Map<string, number>();
      for (const r of replicas.values()) c2.set(r.state, (c2.get(r.state) ?? 0) + 1);
      $('summary').replaceChildren(
        `cluster ${info!.cluster} on ${info!.head}: ${replicas.size} replicas — `,
        ...[...c2].map(([s, n]) => h('span', { class: `sum s-${s}` }, `${n} ${s} `)),
      );
      for (const g of info!.groups) {
        const rs = [...replicas.values()].filter((r) => r.group === g.name);
        const head = document.querySelector(`#gh-${CSS.escape(g.name)} .muted`);
        if (head)
          head.textContent = `${rs.filter((r) => r.state === 'ready' || r.state === 'running').length}/${rs.length} up${g.gpus ? ` · ${g.gpus} gpu each` : ''}`;
      }
    }
    if (fresh.length) $('recent').replaceChildren(...events.slice(0, 8).map((e) => eventRow(e)));
  };
}

// ---------------------------------------------------------------------------------------------------------
// Replica view

function renderReplica(main: HTMLElement, name: string): void {
  const dl = h('dl', { class: 'details', id: 'details' });
  const historyBody = h('tbody', { id: 'history' });
  const logBox = h('div', { class: 'log-lines', id: 'log', tabindex: 0, role: 'log', 'aria-label': `log of ${name}` });
  const pause = h('button', { type: 'button', id: 'pause', 'aria-pressed': 'false' }, 'pause');
  const logInfo = h('span', { class: 'muted', id: 'log-info' });
  const cmd = h('div', { class: 'cmd', id: 'cmd' });
  main.replaceChildren(
    h('p', {}, h('a', { href: '#/' }, '← overview')),
    h('h1', {}, name, ' ', h('span', { class: 'badge', id: 'state' })),
    actions(name, name, 'replica'),
    dl,
    h('section', { 'aria-labelledby': 'log-h', class: 'logsec' }, h('div', { class: 'log-bar' }, h('h2', { id: 'log-h' }, 'log'), pause, logInfo), logBox),
    h(
      'section',
      { 'aria-labelledby': 'hist-h' },
      h('h2', { id: 'hist-h' }, 'restart history'),
      h(
        'div',
        { class: 'scroll' },
        h(
          'table',
          { class: 'hist' },
          h('thead', {}, h('tr', {}, h('th', {}, 'time'), h('th', {}, 'event'), h('th', {}, 'exit'), h('th', {}, 'detail'))),
          historyBody,
        ),
      ),
    ),
    h(
      'section',
      { 'aria-labelledby': 'cmd-h' },
      h('h2', { id: 'cmd-h' }, 'command and environment'),
      h('p', { class: 'muted' }, 'secret values are shown as ***'),
      cmd,
    ),
  );

  const showStatus = (r: ReplicaStatus | undefined): void => {
    const badge = $('state');
    if (!r) {
      badge.textContent = 'unknown';
      return;
    }
    badge.textContent = r.state;
    badge.className = `badge s-${r.state}`;
    badge.setAttribute('data-state', r.state);
    const mem = gpuText(r);
    const rows: [string, Node | string][] = [
      ['group', r.group],
      ['node', r.node],
      ['pid', r.pid ? String(r.pid) : '-'],
      ['gpus', r.gpus.length ? r.gpus.join(',') : '-'],
      ['restarts', String(r.restarts)],
      ['uptime', uptimeSpan(r)],
      ['last exit', r.lastExit ? `${exitText(r.lastExit)} at ${clock(r.lastExit.at)}` : '-'],
      ['in state since', clock(r.since)],
    ];
    if (mem !== undefined) rows.push(['gpu memory', `${mem} (sampled ${clock(r.gpu!.at)})`]);
    for (const o of r.gpu?.others ?? []) {
      rows.push([
        'not its own',
        `pid ${o.pid} on gpu ${o.gpu}${o.usedMemoryMiB !== null ? `, ${mib(o.usedMemoryMiB)}` : ''}${o.owner ? ` (${o.owner})` : ' (unknown owner)'}`,
      ]);
    }
    if (r.message) rows.push(['message', r.message]);
    if (r.containment) rows.push(['containment', r.containment]);
    if (r.adopted) rows.push(['adopted', 'yes: taken over from an earlier supervisor']);
    dl.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', { 'data-field': k }, v)]));
  };
  const historyRow = (e: TimelineEvent): HTMLElement =>
    h(
      'tr',
      { class: `l-${e.level}`, 'data-kind': e.kind },
      h('td', {}, h('time', { datetime: new Date(e.t).toISOString() }, new Date(e.t - skew).toLocaleString([], { hour12: false }))),
      h('td', {}, h('span', { class: `k k-${e.kind}` }, e.kind)),
      h('td', {}, e.kind === 'exited' ? (e.signal ?? `code ${e.code}`) : ''),
      h('td', { class: 'msg' }, e.msg),
    );
  showStatus(replicas.get(name) ?? services.get(name));

  let closed = false;
  void fetch(`/api/replica/${encodeURIComponent(name)}`)
    .then(async (r) => {
      const d = (await r.json()) as ReplicaDetail & { ok?: false; error?: string };
      if (closed) return;
      if (!r.ok) {
        notice(d.error ?? `HTTP ${r.status}`, 'error');
        return;
      }
      historyBody.replaceChildren(...d.history.map((e) => historyRow(e)));
      if (!d.history.length) historyBody.append(h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'no events yet')));
      cmd.replaceChildren(
        h('pre', {}, d.argv.join(' ')),
        d.cwd ? h('p', { class: 'muted' }, `in ${d.cwd}`) : '',
        h(
          'div',
          { class: 'scroll' },
          h('table', { class: 'env' }, h('tbody', {}, ...Object.entries(d.env).map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v))))),
        ),
        d.log ? h('p', { class: 'muted' }, `log file ${d.log}`) : '',
      );
    })
    .catch((err: Error) => notice(err.message, 'error'));

  // The log: history, then live lines. Paused, lines are held (bounded) and shown on resume.
  let paused = false;
  let held: string[] = [];
  let heldDropped = 0;
  let total = 0;
  const atBottom = (): boolean => logBox.scrollHeight - logBox.scrollTop - logBox.clientHeight < 24;
  const marker = (text: string): HTMLElement => h('div', { class: 'ln marker' }, text);
  const append = (nodes: HTMLElement[]): void => {
    const follow = atBottom();
    logBox.append(...nodes);
    while (logBox.childElementCount > MAX_LOG_LINES) logBox.firstElementChild!.remove();
    if (follow) logBox.scrollTop = logBox.scrollHeight;
    logInfo.textContent = `${total} lines${paused ? ' · paused' : ''}`;
  };
  const lineEl = (text: string): HTMLElement => {
    const el = h('div', { class: 'ln' });
    for (const run of parseSgr(text)) {
      const cls = styleClass(run.style);
      if (!cls.length && run.style.fg === undefined && run.style.bg === undefined) el.append(run.text);
      else {
        const span = h('span', { class: cls.join(' ') || undefined }, run.text);
        if (typeof run.style.fg === 'string') span.style.color = run.style.fg;
        if (typeof run.style.bg === 'string') span.style.backgroundColor = run.style.bg;
        el.append(span);
      }
    }
    return el;
  };
  const lines = (texts: readonly string[]): void => {
    total += texts.length;
    if (paused) {
      held.push(...texts);
      if (held.length > MAX_HELD) {
        heldDropped += held.length - MAX_HELD;
        held = held.slice(-MAX_HELD);
      }
      logInfo.textContent = `${total} lines · paused (${held.length + heldDropped} new)`;
      return;
    }
    append(texts.map(lineEl));
  };
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'resume' : 'pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (!paused) {
      const nodes = heldDropped ? [marker(`… ${heldDropped} lines not shown while paused (they are in the log file)`)] : [];
      nodes.push(...held.map(lineEl));
      held = [];
      heldDropped = 0;
      logBox.scrollTop = logBox.scrollHeight;
      append(nodes);
    } else logInfo.textContent = `${total} lines · paused`;
  });
  const es = new EventSource(`/api/logs/${encodeURIComponent(name)}?n=200`);
  es.addEventListener('history', (ev) => {
    const d = JSON.parse((ev as MessageEvent<string>).data) as { lines: string[]; error?: string };
    // The start of the view, or a reconnect (it sends the history again): start over rather than show it twice.
    logBox.replaceChildren();
    total = d.lines.length;
    held = [];
    heldDropped = 0;
    append(d.lines.map(lineEl));
    logBox.scrollTop = logBox.scrollHeight;
    if (d.error) append([marker(`cannot read the log: ${d.error}`)]);
  });
  es.addEventListener('lines', (ev) => lines((JSON.parse((ev as MessageEvent<string>).data) as { lines: string[] }).lines));
  es.addEventListener('skipped', (ev) => {
    const n = (JSON.parse((ev as MessageEvent<string>).data) as { count: number }).count;
    append([marker(`… ${n} lines skipped: this page fell behind (they are in the log file)`)]);
  });
  leaveView = () => {
    closed = true;
    es.close();
  };
  refreshView = (changed, fresh) => {
    if (changed.includes(name)) showStatus(replicas.get(name) ?? services.get(name));
    const mine = fresh.filter((e) => e.replica === name);
    if (mine.length) {
      historyBody.querySelector('td[colspan]')?.parentElement?.remove();
      historyBody.prepend(...mine.map((e) => historyRow(e)));
    }
  };
}

function styleClass(s: Style): string[] {
  const c: string[] = [];
  if (typeof s.fg === 'number') c.push(`f${s.fg}`);
  if (typeof s.bg === 'number') c.push(`b${s.bg}`);
  if (s.bold) c.push('bo');
  if (s.dim) c.push('di');
  if (s.italic) c.push('it');
  if (s.underline) c.push('un');
  if (s.inverse) c.push('inv');
  return c;
}

// ---------------------------------------------------------------------------------------------------------
// Events view

/** The events view's filters: which kinds each shows. */
const FILTERS: readonly [string, string, readonly string[] | null][] = [
  ['all', 'everything', null],
  ['restarts', 'restarts and exits', ['exited', 'restarting', 'failed', 'launch-failed', 'unhealthy', 'fatal-log', 'stop-escalated', 'leftovers']],
  ['health', 'health failures', ['unhealthy', 'fatal-log', 'failed']],
  ['partitions', 'partitions', ['partition']],
  ['adoptions', 'adoptions', ['adopted']],
  ['applies', 'applies and rolling restarts', ['apply', 'rollout', 'scale']],
];

function renderEvents(main: HTMLElement): void {
  const list = h('ol', { class: 'events', id: 'events' });
  const select = h('select', { id: 'filter' }, ...FILTERS.map(([v, label]) => h('option', { value: v }, label)));
  let kinds: readonly string[] | null = null;
  const shows = (e: TimelineEvent): boolean => !kinds || kinds.includes(e.kind);
  const fill = (): void => {
    const shown = events.filter(shows);
    list.replaceChildren(...shown.map((e) => eventRow(e)));
    if (!shown.length) list.append(h('li', { class: 'muted' }, 'none yet'));
  };
  select.addEventListener('change', () => {
    kinds = FILTERS.find(([v]) => v === select.value)?.[2] ?? null;
    fill();
  });
  fill();
  main.replaceChildren(
    h('h1', {}, 'events'),
    h('p', { class: 'muted' }, 'restarts, health failures, partitions, adoptions, applies: newest first'),
    h('p', { class: 'filter' }, h('label', { for: 'filter' }, 'show '), select),
    list,
  );
  refreshView = (_changed, fresh) => {
    const mine = fresh.filter(shows);
    if (!mine.length) return;
    list.querySelector('li.muted')?.remove();
    list.prepend(...mine.map((e) => eventRow(e)));
  };
}

// ---------------------------------------------------------------------------------------------------------
// Routing and the status stream

function route(): { view: 'overview' | 'events' | 'replica'; name?: string } {
  const hash = location.hash.replace(/^#/, '');
  const m = /^\/replica\/(.+)$/.exec(hash);
  if (m) return { view: 'replica', name: decodeURIComponent(m[1]!) };
  if (hash === '/events') return { view: 'events' };
  return { view: 'overview' };
}

let renderedRoute = '';
function rerender(): void {
  if (!info) return;
  const r = route();
  const focused = document.activeElement?.id;
  leaveView?.();
  leaveView = null;
  refreshView = null;
  const main = $('main');
  if (r.view === 'replica') renderReplica(main, r.name!);
  else if (r.view === 'events') renderEvents(main);
  else renderOverview(main);
  for (const a of document.querySelectorAll<HTMLElement>('[data-nav]')) a.toggleAttribute('aria-current', a.dataset.nav === r.view);
  document.title = `${r.name ?? r.view} · ${info.cluster} · dynsup`;
  const key = location.hash;
  if (key !== renderedRoute) {
    renderedRoute = key;
    // A new view: focus moves to its content (screen readers, keyboard users), not on a redraw.
    if (key) $('main').focus({ preventScroll: false });
  } else if (focused) document.getElementById(focused)?.focus({ preventScroll: true });
}

let statusStream: EventSource | null = null;

/**
 * A hidden tab holds no connection: a browser allows only 6 HTTP/1.1 connections per host, and every open
 * stream takes one for as long as it lasts, so a seventh tab of the page would not even load. Back in
 * view, the tab reconnects and redraws from a fresh snapshot (and its log view from the log's tail).
 */
function disconnect(): void {
  statusStream?.close();
  statusStream = null;
  leaveView?.();
  leaveView = null;
  live = false;
  $('conn').textContent = 'paused (tab hidden)';
  $('conn').className = 'conn';
}

function connect(): void {
  const es = new EventSource('/api/stream');
  statusStream = es;
  const conn = $('conn');
  es.onopen = () => {
    live = true;
    conn.textContent = 'live';
    conn.className = 'conn live';
    document.body.classList.remove('stale');
  };
  es.onerror = () => {
    live = false;
    conn.textContent = 'reconnecting…';
    conn.className = 'conn lost';
    document.body.classList.add('stale');
  };
  es.addEventListener('snapshot', (ev) => {
    const s = JSON.parse((ev as MessageEvent<string>).data) as Snapshot;
    skew = s.now - Date.now();
    info = { cluster: s.cluster, head: s.head, groups: s.groups, actions: s.actions };
    replicas.clear();
    for (const r of s.replicas) replicas.set(r.name, r);
    services.clear();
    for (const r of s.controlPlane) services.set(r.name, r);
    events = [...s.events];
    $('brand').textContent = `dynsup · ${s.cluster}`;
    rerender();
  });
  es.addEventListener('delta', (ev) => {
    const d = JSON.parse((ev as MessageEvent<string>).data) as Delta;
    skew = d.now - Date.now();
    for (const r of d.changed) (r.group === 'controlPlane' ? services : replicas).set(r.name, r);
    for (const n of d.removed) replicas.delete(n);
    const fresh = [...d.events].reverse();
    if (fresh.length) events = [...fresh, ...events].slice(0, MAX_EVENTS);
    if (d.removed.length) return rerender();
    refreshView?.(
      d.changed.map((r) => r.name),
      fresh,
    );
  });
}

window.addEventListener('hashchange', rerender);
document.addEventListener('visibilitychange', () => {
  if (document.hidden) disconnect();
  else if (!statusStream) connect();
});
document.addEventListener('DOMContentLoaded', () => {
  renderCreds();
  if (document.hidden) disconnect();
  else connect();
  setInterval(() => {
    if (live) tickUptimes();
  }, 1000);
});
