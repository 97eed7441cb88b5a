/** Build step: write the cluster file's JSON Schema (generated from the validator's own schema). */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { clusterJsonSchema } from './schema.js';

const out = process.argv[2] ?? 'schema/cluster.schema.json';
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(clusterJsonSchema(), null, 2)}\n`);
