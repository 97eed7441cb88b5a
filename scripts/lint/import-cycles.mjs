#!/usr/bin/env node
/**
 * No import cycle between folders of src/ (issue 15): builds the graph of which folder imports which
 * (static imports, re-exports and dynamic import(); `import type` too, since a type cycle still ties two
 * folders together and is the usual first step to a runtime one) and fails with each cycle it finds.
 * Folders are the directories files live in, so src/transport and src/transport/ssh are two folders and
 * a cycle between them counts. Also fails on a cycle between files inside one folder.
 *
 * A small script on the TypeScript parser the build already has, instead of madge (which would bring its
 * own TypeScript and resolvers). `npm run lint` runs it; `node scripts/lint/import-cycles.mjs --graph`
 * prints the folder graph.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SRC = join(ROOT, 'src');

function* tsFiles(dir) {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) yield* tsFiles(p);
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.d.ts')) yield p;
  }
}

const RUNTIME_ONLY = process.argv.includes('--runtime');
function typeOnly(node) {
  if (ts.isExportDeclaration(node))
    return node.isTypeOnly || (node.exportClause && ts.isNamedExports(node.exportClause) && node.exportClause.elements.every((e) => e.isTypeOnly));
  const c = node.importClause;
  if (!c) return false;
  if (c.isTypeOnly) return true;
  return (
    !c.name &&
    c.namedBindings &&
    ts.isNamedImports(c.namedBindings) &&
    c.namedBindings.elements.length > 0 &&
    c.namedBindings.elements.every((e) => e.isTypeOnly)
  );
}

/** Relative specifiers a file imports: `import`, `export ... from`, `import()` with a string literal. */
function importsOf(file) {
  const text = readFileSync(file, 'utf8');
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const out = [];
  const visit = (node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      if (!(RUNTIME_ONLY && typeOnly(node))) out.push({ spec: node.moduleSpecifier.text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    } else if (
      ts.isCallExpression(node) &&
      node.expression.kind === ts.SyntaxKind.ImportKeyword &&
      node.arguments[0] &&
      ts.isStringLiteral(node.arguments[0])
    ) {
      out.push({ spec: node.arguments[0].text, line: sf.getLineAndCharacterOfPosition(node.getStart()).line + 1 });
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return out.filter((i) => i.spec.startsWith('.'));
}

/** Elementary cycles of a small graph (Map<node, Set<node>>), each once, starting at its smallest node. */
function cycles(graph) {
  const found = [];
  const nodes = [...graph.keys()].sort();
  for (const start of nodes) {
    const path = [start];
    const walk = (node) => {
      for (const next of [...(graph.get(node) ?? [])].sort()) {
        if (next === start) found.push([...path, start]);
        else if (next > start && !path.includes(next)) {
          path.push(next);
          walk(next);
          path.pop();
        }
      }
    };
    walk(start);
  }
  return found;
}

const folderGraph = new Map(); // folder -> Set<folder>
const fileGraph = new Map(); // file -> Set<file>, within one folder
const where = new Map(); // 'a -> b' -> first import that makes the edge
for (const file of tsFiles(SRC)) {
  const from = relative(SRC, file);
  const fromDir = dirname(from);
  for (const { spec, line } of importsOf(file)) {
    const to = relative(SRC, resolve(dirname(file), spec.replace(/\.js$/, '.ts')));
    const toDir = dirname(to);
    if (toDir === fromDir) {
      if (!fileGraph.has(from)) fileGraph.set(from, new Set());
      fileGraph.get(from).add(to);
      if (!where.has(`${from} -> ${to}`)) where.set(`${from} -> ${to}`, `src/${from}:${line}`);
    } else {
      if (!folderGraph.has(fromDir)) folderGraph.set(fromDir, new Set());
      folderGraph.get(fromDir).add(toDir);
      const key = `${fromDir} -> ${toDir}`;
      if (!where.has(key)) where.set(key, `src/${from}:${line} imports ${spec}`);
    }
  }
}

if (process.argv.includes('--graph')) {
  for (const [from, tos] of [...folderGraph].sort()) console.log(`${from} -> ${[...tos].sort().join(', ')}`);
}

const problems = [];
for (const c of cycles(folderGraph)) {
  problems.push(
    `folders: ${c.join(' -> ')}\n${c
      .slice(1)
      .map((to, i) => `    ${where.get(`${c[i]} -> ${to}`)}`)
      .join('\n')}`,
  );
}
for (const c of cycles(fileGraph)) {
  problems.push(
    `files: ${c.join(' -> ')}\n${c
      .slice(1)
      .map((to, i) => `    ${where.get(`${c[i]} -> ${to}`)}`)
      .join('\n')}`,
  );
}
if (problems.length) {
  console.error(`import cycles in src/ (${problems.length}):\n${problems.map((p) => `  ${p}`).join('\n')}`);
  process.exit(1);
}
console.log(`import-cycles: no cycle between the ${folderGraph.size} folders of src/ or the files within one`);
