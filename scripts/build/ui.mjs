// Builds the web view's page (src/ui/client) into dist/ui/static: app.ts bundled and minified by esbuild,
// index.html and style.css copied. No framework, nothing fetched at run time: the supervisor serves these
// three files (src/ui/server.ts).
//
//   node scripts/build/ui.mjs [OUTDIR]     (default dist/ui/static)
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

const out = process.argv[2] ?? 'dist/ui/static';
mkdirSync(out, { recursive: true });
await build({
  entryPoints: ['src/ui/client/app.ts'],
  outfile: join(out, 'app.js'),
  bundle: true,
  minify: true,
  platform: 'browser',
  format: 'iife',
  target: ['chrome110', 'firefox110', 'safari16'],
  legalComments: 'none',
  logLevel: 'warning',
});
for (const f of ['index.html', 'style.css']) copyFileSync(join('src/ui/client', f), join(out, f));
