/**
 * Reading a cluster file into plain data while keeping every value's source position, so that errors
 * found later (schema, references, placement) can still name file:line:column.
 */
import { readFileSync } from 'node:fs';
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, Scalar, visit, type Document, type Node } from 'yaml';
import { interpolate, InterpolationError } from './interpolate.js';
import { escapeTerminal } from '../util/terminal-escape.js';

export type ConfigPath = readonly (string | number)[];

export interface ConfigIssue {
  readonly file: string;
  readonly line: number;
  readonly column: number;
  /** Dotted field path (`workers.prefill.replicas`), empty for file-level problems. */
  readonly path: string;
  readonly message: string;
}

export interface ConfigSource {
  readonly file: string;
  readonly data: unknown;
  /** Variables substituted from the environment, with the values they had (for redaction). */
  readonly substituted: ReadonlyMap<string, string>;
  /** Position of the value at `path`, or of its nearest existing ancestor. `keyOf` points at the key instead. */
  locate(path: ConfigPath, keyOf?: boolean): { line: number; column: number };
  issue(path: ConfigPath, message: string, keyOf?: boolean): ConfigIssue;
}

export const MAX_FILE_BYTES = 1 << 20;

export function formatPath(path: ConfigPath): string {
  // A key with a newline or an escape sequence must not split or colour the message.
  return path.map((p) => shownKey(String(p))).join('.');
}

/** A key as JSON when it holds a character a terminal would act on (JSON leaves C1 and bidi controls: \u-escaped too). */
function shownKey(k: string): string {
  if (escapeTerminal(k) === k) return k;
  return JSON.stringify(k).replace(/[\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Parse a cluster file. Returns the source (possibly with issues) — never throws for bad content. */
export function loadSource(file: string, env: Readonly<Record<string, string | undefined>>): { source: ConfigSource | null; issues: ConfigIssue[] } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory' : code === 'EACCES' ? 'permission denied' : String(err);
    return { source: null, issues: [{ file, line: 0, column: 0, path: '', message: `cannot read cluster file: ${why}` }] };
  }
  return parseSource(file, bytes, env);
}

export function parseSource(
  file: string,
  bytes: Buffer,
  env: Readonly<Record<string, string | undefined>>,
): { source: ConfigSource | null; issues: ConfigIssue[] } {
  const fileIssue = (line: number, column: number, message: string): ConfigIssue => ({ file, line, column, path: '', message });
  if (bytes.length > MAX_FILE_BYTES) return { source: null, issues: [fileIssue(1, 1, `file is larger than ${MAX_FILE_BYTES} bytes`)] };
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    const at = firstInvalidUtf8(bytes);
    const before = bytes.subarray(0, at).toString('utf8');
    const line = before.split('\n').length;
    const column = before.length - before.lastIndexOf('\n');
    return { source: null, issues: [fileIssue(line, column, `file is not valid UTF-8 (byte 0x${bytes[at]?.toString(16) ?? '??'} at offset ${at})`)] };
  }
  if (text.includes('\0')) {
    const lines = text.slice(0, text.indexOf('\0')).split('\n');
    return { source: null, issues: [fileIssue(lines.length, (lines.at(-1)?.length ?? 0) + 1, 'file contains a NUL byte')] };
  }

  const lineCounter = new LineCounter();
  // maxAliasCount guards against "billion laughs" alias bombs; uniqueKeys makes duplicates an error.
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, merge: true, prettyErrors: false, strict: true });
  const posOf = (offset: number) => {
    const p = lineCounter.linePos(offset);
    return { line: p.line, column: p.col };
  };
  const issues: ConfigIssue[] = [];
  for (const e of [...doc.errors, ...doc.warnings]) {
    const { line, column } = posOf(e.pos[0]);
    issues.push(fileIssue(line, column, yamlMessage(e.code, e.message)));
  }
  if (issues.length) return { source: null, issues };

  const substituted = new Map<string, string>();
  const locateNode = (node: Node | null | undefined) => (node?.range ? posOf(node.range[0]) : { line: 1, column: 1 });
  const source: ConfigSource = {
    file,
    data: undefined,
    substituted,
    locate: (path, keyOf) => locateIn(doc, path, keyOf ?? false, locateNode),
    issue(path, message, keyOf) {
      return { file, ...this.locate(path, keyOf), path: formatPath(path), message };
    },
  };

  interpolateDocument(doc, env, substituted, (path, message) => issues.push(source.issue(path, message)));
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 100 });
  } catch (err) {
    // Alias expansion limits are enforced here.
    issues.push(fileIssue(1, 1, `cannot load YAML: ${(err as Error).message}`));
    return { source: null, issues };
  }
  return { source: { ...source, data }, issues };
}

function yamlMessage(code: string, message: string): string {
  const first = message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
  return `YAML ${code === 'DUPLICATE_KEY' ? 'duplicate key' : 'syntax error'}: ${first}`;
}

/** Offset of the lead byte of the first invalid UTF-8 sequence (scanned forward, one sequence at a time). */
function firstInvalidUtf8(bytes: Buffer): number {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i]!;
    const len = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    if (len === 0 || i + len > bytes.length) return i;
    try {
      decoder.decode(bytes.subarray(i, i + len));
    } catch {
      return i;
    }
    i += len;
  }
  return i;
}

/** Substitute `${VAR}` in every scalar value (not keys), in place, recording errors at the scalar's path. */
function interpolateDocument(
  doc: Document,
  env: Readonly<Record<string, string | undefined>>,
  substituted: Map<string, string>,
  onError: (path: ConfigPath, message: string) => void,
): void {
  visit(doc, {
    Scalar(key, node, ancestors) {
      if (key === 'key' || typeof node.value !== 'string' || !node.value.includes('$')) return;
      const path = pathOf(ancestors, node);
      try {
        const { value, used } = interpolate(node.value, env);
        for (const name of used) substituted.set(name, env[name] ?? '');
        node.value = node.value.includes('${') && node.type === Scalar.PLAIN ? retype(value) : value;
      } catch (err) {
        if (err instanceof InterpolationError) onError(path, err.message);
        else throw err;
      }
    },
  });
}

/** An unquoted `${N}` that yields `2` is the number 2, as it would be had it been typed in (compose does the same). */
function retype(value: string): unknown {
  if (/^-?\d+$/.test(value)) return Number(value);
  if (/^-?\d*\.\d+$/.test(value)) return Number(value);
  if (value === 'true' || value === 'false') return value === 'true';
  return value;
}

function pathOf(ancestors: readonly unknown[], leaf: unknown): (string | number)[] {
  const path: (string | number)[] = [];
  const chain = [...ancestors, leaf];
  for (let i = 0; i < chain.length - 1; i++) {
    const parent = chain[i];
    const child = chain[i + 1];
    if (isPair(parent) && isScalar(parent.key)) path.push(String(parent.key.value));
    else if (isSeq(parent)) path.push(parent.items.indexOf(child as never));
  }
  return path;
}

function locateIn(
  doc: Document,
  path: ConfigPath,
  keyOf: boolean,
  locateNode: (n: Node | null | undefined) => { line: number; column: number },
): { line: number; column: number } {
  let node: unknown = doc.contents;
  let best: Node | null = (doc.contents as Node | null) ?? null;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i]!;
    const last = i === path.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) break;
      if (last && keyOf) return locateNode(pair.key as Node);
      node = pair.value;
      best = (pair.value as Node | null) ?? (pair.key as Node);
    } else if (isSeq(node) && typeof seg === 'number') {
      node = node.items[seg];
      if (!node) break;
      best = node as Node;
    } else break;
  }
  return locateNode(best);
}
