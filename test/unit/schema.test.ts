/**
 * The published JSON Schema (generated from the zod schema): well-formed draft 2020-12, complete, up to date,
 * and in agreement with the validator on every fixture. clusters/*.yaml must load.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadCluster } from '../../src/config/load.js';
import { clusterJsonSchema, clusterSchema, defaultsSchema, nodeSchema, workerSchema } from '../../src/config/schema.js';
import { parseSource } from '../../src/config/source.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
type Schema = boolean | { [k: string]: unknown };
type Obj = { [k: string]: unknown };
const schema = clusterJsonSchema() as Obj;

/** Keywords of the draft 2020-12 vocabularies (core, applicator, validation, meta-data, format, content, unevaluated). */
const KEYWORDS = new Set([
  '$schema',
  '$id',
  '$ref',
  '$defs',
  '$comment',
  '$anchor',
  '$dynamicRef',
  '$dynamicAnchor',
  '$vocabulary',
  'allOf',
  'anyOf',
  'oneOf',
  'not',
  'if',
  'then',
  'else',
  'dependentSchemas',
  'prefixItems',
  'items',
  'contains',
  'properties',
  'patternProperties',
  'additionalProperties',
  'propertyNames',
  'unevaluatedItems',
  'unevaluatedProperties',
  'type',
  'enum',
  'const',
  'multipleOf',
  'maximum',
  'exclusiveMaximum',
  'minimum',
  'exclusiveMinimum',
  'maxLength',
  'minLength',
  'pattern',
  'maxItems',
  'minItems',
  'uniqueItems',
  'maxContains',
  'minContains',
  'maxProperties',
  'minProperties',
  'required',
  'dependentRequired',
  'title',
  'description',
  'default',
  'deprecated',
  'readOnly',
  'writeOnly',
  'examples',
  'format',
  'contentEncoding',
  'contentMediaType',
  'contentSchema',
]);
const TYPES = new Set(['null', 'boolean', 'object', 'array', 'number', 'string', 'integer']);
const SCHEMA_MAPS = ['properties', 'patternProperties', '$defs', 'dependentSchemas'];
const SCHEMA_ONE = ['additionalProperties', 'propertyNames', 'items', 'not', 'if', 'then', 'else', 'contains', 'unevaluatedItems', 'unevaluatedProperties'];
const SCHEMA_LISTS = ['anyOf', 'oneOf', 'allOf', 'prefixItems'];

function resolveRef(ref: string): unknown {
  if (!ref.startsWith('#')) throw new Error(`external $ref ${ref}`);
  let cur: unknown = schema;
  for (const raw of ref.slice(1).split('/').filter(Boolean)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    cur = (cur as Obj)[seg];
    if (cur === undefined) throw new Error(`unresolvable $ref ${ref}`);
  }
  return cur;
}

/** Problems with the shape of a draft 2020-12 schema, with their JSON pointers. */
function shapeProblems(s: unknown, at = '#'): string[] {
  if (typeof s === 'boolean') return [];
  if (s === null || typeof s !== 'object' || Array.isArray(s)) return [`${at}: a schema must be an object or a boolean`];
  const o = s as Obj;
  const out: string[] = [];
  const nonNegInt = (k: string) =>
    o[k] !== undefined && !(Number.isInteger(o[k]) && (o[k] as number) >= 0) && out.push(`${at}/${k}: not a non-negative integer`);
  for (const k of Object.keys(o)) if (!KEYWORDS.has(k)) out.push(`${at}: unknown keyword ${k}`);
  if (o['$schema'] !== undefined && at !== '#') out.push(`${at}: $schema below the root`);
  if (o['type'] !== undefined) {
    const types = Array.isArray(o['type']) ? o['type'] : [o['type']];
    for (const t of types) if (!TYPES.has(t as string)) out.push(`${at}/type: ${String(t)}`);
  }
  if (o['required'] !== undefined) {
    const req = o['required'];
    if (!Array.isArray(req) || req.some((r) => typeof r !== 'string') || new Set(req).size !== req.length) out.push(`${at}/required: not unique strings`);
    const props = Object.keys((o['properties'] as Obj | undefined) ?? {});
    for (const r of (req as string[]) ?? []) if (!props.includes(r)) out.push(`${at}/required: ${r} is not a property`);
  }
  if (o['enum'] !== undefined && (!Array.isArray(o['enum']) || o['enum'].length === 0)) out.push(`${at}/enum: not a non-empty array`);
  if (o['pattern'] !== undefined) {
    try {
      new RegExp(o['pattern'] as string, 'u');
    } catch (e) {
      out.push(`${at}/pattern: ${(e as Error).message}`);
    }
  }
  for (const k of ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum', 'multipleOf']) {
    if (o[k] !== undefined && typeof o[k] !== 'number') out.push(`${at}/${k}: not a number (draft-04 boolean form?)`);
  }
  for (const k of ['minLength', 'maxLength', 'minItems', 'maxItems', 'minProperties', 'maxProperties']) nonNegInt(k);
  if (Array.isArray(o['items'])) out.push(`${at}/items: an array (2020-12 uses prefixItems)`);
  if (typeof o['$ref'] === 'string') {
    try {
      resolveRef(o['$ref']);
    } catch (e) {
      out.push(`${at}/$ref: ${(e as Error).message}`);
    }
  }
  for (const k of SCHEMA_MAPS) {
    if (o[k] === undefined) continue;
    if (typeof o[k] !== 'object' || Array.isArray(o[k])) out.push(`${at}/${k}: not an object`);
    else for (const [name, sub] of Object.entries(o[k] as Obj)) out.push(...shapeProblems(sub, `${at}/${k}/${name}`));
  }
  for (const k of SCHEMA_ONE) if (o[k] !== undefined) out.push(...shapeProblems(o[k], `${at}/${k}`));
  for (const k of SCHEMA_LISTS) {
    if (o[k] === undefined) continue;
    if (!Array.isArray(o[k]) || (o[k] as unknown[]).length === 0) out.push(`${at}/${k}: not a non-empty array`);
    else (o[k] as unknown[]).forEach((sub, i) => out.push(...shapeProblems(sub, `${at}/${k}/${i}`)));
  }
  return out;
}

/** A small validator for the keywords this schema uses (enough to compare with zod; not a general one). */
function validate(s: Schema, v: unknown): boolean {
  if (typeof s === 'boolean') return s;
  if (typeof s['$ref'] === 'string' && !validate(resolveRef(s['$ref']) as Schema, v)) return false;
  const typeOk = (t: string) =>
    t === 'null'
      ? v === null
      : t === 'array'
        ? Array.isArray(v)
        : t === 'object'
          ? v !== null && typeof v === 'object' && !Array.isArray(v)
          : t === 'integer'
            ? Number.isInteger(v)
            : typeof v === t;
  if (s['type'] !== undefined && !(Array.isArray(s['type']) ? s['type'] : [s['type']]).some((t) => typeOk(t as string))) return false;
  if (Array.isArray(s['enum']) && !s['enum'].includes(v)) return false;
  if ('const' in s && s['const'] !== v) return false;
  if (Array.isArray(s['anyOf']) && !s['anyOf'].some((x) => validate(x as Schema, v))) return false;
  if (Array.isArray(s['oneOf']) && s['oneOf'].filter((x) => validate(x as Schema, v)).length !== 1) return false;
  if (Array.isArray(s['allOf']) && !s['allOf'].every((x) => validate(x as Schema, v))) return false;
  if (typeof v === 'number') {
    if (typeof s['minimum'] === 'number' && v < s['minimum']) return false;
    if (typeof s['maximum'] === 'number' && v > s['maximum']) return false;
    if (typeof s['exclusiveMinimum'] === 'number' && v <= s['exclusiveMinimum']) return false;
    if (typeof s['exclusiveMaximum'] === 'number' && v >= s['exclusiveMaximum']) return false;
  }
  if (typeof v === 'string') {
    const len = [...v].length;
    if (typeof s['minLength'] === 'number' && len < s['minLength']) return false;
    if (typeof s['maxLength'] === 'number' && len > s['maxLength']) return false;
    if (typeof s['pattern'] === 'string' && !new RegExp(s['pattern'], 'u').test(v)) return false;
  }
  if (Array.isArray(v)) {
    if (typeof s['minItems'] === 'number' && v.length < s['minItems']) return false;
    if (typeof s['maxItems'] === 'number' && v.length > s['maxItems']) return false;
    if (s['items'] !== undefined && !v.every((x) => validate(s['items'] as Schema, x))) return false;
  }
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    const o = v as Obj;
    const props = (s['properties'] as Record<string, Schema> | undefined) ?? {};
    if (Array.isArray(s['required']) && !s['required'].every((k) => Object.hasOwn(o, k as string))) return false;
    for (const [k, x] of Object.entries(o)) {
      if (s['propertyNames'] !== undefined && !validate(s['propertyNames'] as Schema, k)) return false;
      if (Object.hasOwn(props, k)) {
        if (!validate(props[k]!, x)) return false;
      } else if (s['additionalProperties'] !== undefined && !validate(s['additionalProperties'] as Schema, x)) return false;
    }
  }
  return true;
}

const keysOf = (s: unknown) => Object.keys(((s as Obj)['properties'] as Obj | undefined) ?? {}).sort();
const prop = (s: unknown, ...path: string[]) =>
  path.reduce<unknown>((cur, k) => (k === '*' ? (cur as Obj)['additionalProperties'] : ((cur as Obj)['properties'] as Obj)[k]), s);

describe('clusterJsonSchema', () => {
  it('is a draft 2020-12 object schema', () => {
    expect(schema['$schema']).toBe('https://json-schema.org/draft/2020-12/schema');
    expect(schema['type']).toBe('object');
    expect(schema['additionalProperties']).toBe(false);
    expect(typeof schema['title']).toBe('string');
    expect(typeof schema['description']).toBe('string');
  });

  it('has a well-formed shape everywhere (keywords, types, patterns, required, $refs)', () => {
    expect(shapeProblems(schema)).toEqual([]);
  });

  it('round-trips through JSON unchanged (nothing unrepresentable slipped in)', () => {
    expect(JSON.parse(JSON.stringify(schema))).toEqual(schema);
  });

  it('mentions every top-level key, requiring name, head, nodes (unless slurm) and workers', () => {
    expect(keysOf(schema)).toEqual(Object.keys(clusterSchema.shape).sort());
    expect(keysOf(schema)).toEqual([
      '$schema',
      'controlPlane',
      'defaults',
      'head',
      'lease',
      'logs',
      'metrics',
      'name',
      'nodes',
      'slurm',
      'stateDir',
      'ui',
      'workers',
    ]);
    expect([...(schema['required'] as string[])].sort()).toEqual(['name', 'workers']);
    // head (with its address) and nodes are required unless the file has a slurm: section (the allocation supplies them).
    expect(schema['if']).toEqual({ not: { properties: { slurm: true }, required: ['slurm'] } });
    expect([...((schema['then'] as Obj)['required'] as string[])].sort()).toEqual(['head', 'nodes']);
  });

  it('describes every field of nodes, workers, defaults and the control plane, and allows no others', () => {
    expect(keysOf(prop(schema, 'nodes', '*'))).toEqual(Object.keys(nodeSchema.shape).sort());
    expect(keysOf(prop(schema, 'workers', '*'))).toEqual(Object.keys(workerSchema.shape).sort());
    expect(keysOf(prop(schema, 'defaults'))).toEqual(Object.keys(defaultsSchema.shape).sort());
    expect(keysOf(prop(schema, 'controlPlane'))).toEqual(['etcd', 'nats']);
    expect(keysOf(prop(schema, 'controlPlane', 'nats'))).toEqual(['args', 'binary', 'enabled', 'jetstream', 'monitorPort', 'port', 'workerCredentials']);
    expect(keysOf(prop(schema, 'controlPlane', 'etcd'))).toEqual(['args', 'auth', 'binary', 'enabled', 'peerPort', 'port', 'tls']);
    for (const p of [
      ['head'],
      ['nodes', '*'],
      ['workers', '*'],
      ['defaults'],
      ['workers', '*', 'restart'],
      ['workers', '*', 'stop'],
      ['workers', '*', 'health'],
    ]) {
      expect((prop(schema, ...p) as Obj)['additionalProperties'], p.join('.')).toBe(false);
    }
    expect((prop(schema, 'workers') as Obj)['propertyNames']).toMatchObject({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$' });
    expect((prop(schema, 'workers', '*', 'command') as Obj)['description']).toMatch(/sh -c/);
  });

  it('is what the build published in schema/cluster.schema.json (run `npm run build` if not)', () => {
    const published = readFileSync(join(root, 'schema/cluster.schema.json'), 'utf8');
    expect(published).toBe(`${JSON.stringify(clusterJsonSchema(), null, 2)}\n`);
  });

  describe('agrees with the validator', () => {
    const env = { HOME: '/home/dynsup-test', N: '2', GPUS: '4', ONE: '1', HF_TOKEN: 'hf_x1234', EMPTY_VAR: '', FALLBACK: 'fb', MY_API_KEY: 'k-12345' };
    const files = ['good', 'bad'].flatMap((d) =>
      readdirSync(join(root, 'test/fixtures', d))
        .filter((f) => f !== 'expected.json' && statSync(join(root, 'test/fixtures', d, f)).isFile())
        .map((f) => join('test/fixtures', d, f)),
    );
    // Fixtures that never reach the schema (not YAML, or a `${VAR}` that cannot be expanded): no document
    // to compare, so they are checked apart below, not skipped.
    const parsed = (rel: string) => parseSource(rel, readFileSync(join(root, rel)), env);
    const compared = files.filter((rel) => {
      const { source, issues } = parsed(rel);
      return source && !issues.length;
    });
    const unparsed = files.filter((rel) => !compared.includes(rel));
    it.each(compared)('%s', (rel) => {
      const data = parsed(rel).source!.data;
      const byZod = clusterSchema.safeParse(data).success;
      expect(validate(schema as Schema, data)).toBe(byZod);
    });
    it('the fixtures with no document are bad ones, refused before the schema', () => {
      expect(unparsed.length).toBeGreaterThan(0);
      for (const rel of unparsed) {
        expect(rel.startsWith('test/fixtures/bad/'), rel).toBe(true);
        expect(parsed(rel).issues.length + (parsed(rel).source ? 0 : 1), rel).toBeGreaterThan(0);
        expect(() => loadCluster(join(root, rel), { env }), rel).toThrow(ConfigError);
      }
    });
  });
});

describe('clusters/*.yaml', () => {
  const dir = join(root, 'clusters');
  const files = readdirSync(dir).filter((f) => /\.ya?ml$/.test(f));
  it('exist', () => expect(files.length).toBeGreaterThan(0));
  it.each(files)('%s loads', (f) => {
    const c = loadCluster(join(dir, f), { env: { HOME: '/home/dynsup-test', USER: 'test' } });
    expect(c.replicas.length).toBeGreaterThan(0);
    const { source } = parseSource(f, readFileSync(join(dir, f)), { HOME: '/home/dynsup-test', USER: 'test' });
    expect(validate(schema as Schema, source?.data)).toBe(true);
  });
});
