/**
 * The web view's events timeline: dynsup's own events (the JSON lines of <stateDir>/logs/dynsup.log, already
 * redacted), kept in memory in bounded rings: the latest N of the cluster, and the latest M per replica (its
 * restart history). Pure: the supervisor feeds it lines; the UI reads it.
 */
import type { TimelineEvent as WireTimelineEvent } from './wire.js';

/** What the timeline shows an event as (filters, colours). */
export type TimelineKind =
  | 'started'
  | 'exited'
  | 'restarting'
  | 'failed'
  | 'ready'
  | 'unhealthy'
  | 'fatal-log'
  | 'adopted'
  | 'stopped'
  | 'launch-failed'
  | 'stop-escalated'
  | 'leftovers'
  | 'hook-failed'
  | 'partition'
  | 'apply'
  | 'rollout'
  | 'scale'
  | 'cluster'
  | 'other';

/** An event as the page gets it (wire.ts), its kind one of ours. */
export interface TimelineEvent extends WireTimelineEvent {
  readonly kind: TimelineKind;
}

const KINDS = new Set<string>([
  'started',
  'exited',
  'restarting',
  'failed',
  'ready',
  'unhealthy',
  'fatal-log',
  'adopted',
  'stopped',
  'launch-failed',
  'stop-escalated',
  'leftovers',
  'hook-failed',
]);

/** Kinds of events without a `kind` field, told by their message. First match wins. */
const BY_MESSAGE: readonly [RegExp, TimelineKind][] = [
  [/^node \S+: (connection to the agent lost|reconnected|cannot)/, 'partition'],
  [/could not reach node|unreachable/, 'partition'],
  [/\bappl(y|ied|ying)\b/i, 'apply'],
  [/^rolling restart\b/, 'rollout'],
  [/\bscal(e|ed|ing)\b/i, 'scale'],
  [/adopt/, 'adopted'],
  [/^(bringing up|cluster \S+ is up|stopping cluster|all stopped|control plane ready|started group)/, 'cluster'],
];

function levelOf(n: unknown): TimelineEvent['level'] | null {
  if (typeof n !== 'number') return null;
  if (n >= 50) return 'error';
  if (n >= 40) return 'warn';
  if (n >= 30) return 'info';
  return null; // debug and trace stay in the file
}

/** One event log line (pino JSON) as a timeline event; null for what the timeline does not show. */
export function parseEventLine(line: string, id: number): TimelineEvent | null {
  let e: Record<string, unknown>;
  try {
    e = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return null;
  }
  if (!e || typeof e !== 'object') return null;
  const level = levelOf(e.level);
  const msg = typeof e.msg === 'string' ? e.msg : null;
  if (!level || msg === null) return null;
  const t = typeof e.time === 'number' ? e.time : Date.now();
  const kind: TimelineKind =
    typeof e.kind === 'string' && KINDS.has(e.kind) ? (e.kind as TimelineKind) : (BY_MESSAGE.find(([re]) => re.test(msg))?.[1] ?? 'other');
  const replica = typeof e.replica === 'string' ? e.replica : undefined;
  const node = typeof e.node === 'string' ? e.node : /^node (\S+):/.exec(msg)?.[1];
  return {
    id,
    t,
    level,
    kind,
    ...(replica ? { replica } : {}),
    ...(node ? { node } : {}),
    msg,
    ...(kind === 'exited' ? { code: typeof e.code === 'number' ? e.code : null, signal: typeof e.signal === 'string' ? e.signal : null } : {}),
  };
}

export interface TimelineOptions {
  /** Events kept for the cluster (newest). */
  readonly max?: number;
  /** Events kept per replica (its restart history). */
  readonly perReplica?: number;
}

export class Timeline {
  readonly #max: number;
  readonly #perReplica: number;
  readonly #all: TimelineEvent[] = [];
  readonly #byReplica = new Map<string, TimelineEvent[]>();
  readonly #listeners = new Set<(e: TimelineEvent) => void>();
  #nextId = 1;

  constructor(o: TimelineOptions = {}) {
    this.#max = o.max ?? 500;
    this.#perReplica = o.perReplica ?? 50;
  }

  /** Feed one or more event log lines (a chunk of pino's output). */
  write(text: string): void {
    for (const line of text.split('\n')) {
      if (!line) continue;
      const e = parseEventLine(line, this.#nextId);
      if (!e) continue;
      this.#nextId++;
      this.#add(e);
      for (const l of this.#listeners) l(e);
    }
  }

  #add(e: TimelineEvent): void {
    push(this.#all, e, this.#max);
    if (e.replica) {
      let r = this.#byReplica.get(e.replica);
      if (!r) this.#byReplica.set(e.replica, (r = []));
      push(r, e, this.#perReplica);
    }
  }

  /** The latest `n` events, newest first. */
  recent(n = this.#max): TimelineEvent[] {
    return this.#all.slice(-n).reverse();
  }

  /** A replica's latest events, newest first. */
  ofReplica(name: string): TimelineEvent[] {
    return [...(this.#byReplica.get(name) ?? [])].reverse();
  }

  onEvent(listener: (e: TimelineEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

function push<T>(ring: T[], v: T, max: number): void {
  ring.push(v);
  // Amortised: trim in batches rather than shifting on every push.
  if (ring.length > max * 1.25) ring.splice(0, ring.length - max);
}
