/**
 * `node --import ./test/helpers/module-log.mjs ...` records every module the process loads, one URL or path
 * a line, in the file named by $DYNSUP_MODULE_LOG: ES modules as the loader resolves them (a resolve hook,
 * which also sees an ES module importing a CommonJS package), and at exit every CommonJS module in the
 * require cache (which also holds packages that only CommonJS code required).
 */
import { appendFileSync } from 'node:fs';
import { createRequire, register } from 'node:module';

const log = process.env.DYNSUP_MODULE_LOG;
if (log) {
  const hook = `
    import { appendFileSync } from 'node:fs';
    export async function resolve(specifier, context, next) {
      const r = await next(specifier, context);
      appendFileSync(${JSON.stringify(log)}, 'esm ' + r.url + '\\n');
      return r;
    }`;
  register(`data:text/javascript,${encodeURIComponent(hook)}`, import.meta.url);
  const cache = createRequire(import.meta.url).cache;
  process.on('exit', () => {
    appendFileSync(
      log,
      Object.keys(cache)
        .map((p) => `cjs ${p}\n`)
        .join(''),
    );
  });
}
