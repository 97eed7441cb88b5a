import { clusterJsonSchema } from '../config/schema.js';

export async function schemaCommand(): Promise<number> {
  process.stdout.write(`${JSON.stringify(clusterJsonSchema(), null, 2)}\n`);
  return 0;
}
