/**
 * Checks of the head's own directories named by a cluster file: the state dir (must be a directory dynsup
 * can create or use, on a real file system) and a local group's cwd (must exist). They look, never create.
 */
import { accessSync, constants, realpathSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** Never a state dir: the root, and the kernel's pseudo file systems (mkdir there fails or loops). */
const FORBIDDEN = ['/', '/proc', '/sys', '/dev'];
/** Nor anything under these. */
const FORBIDDEN_TREES = ['/proc', '/sys'];

function forbidden(p: string): string | undefined {
  if (p === '/') return 'is the root directory';
  if (FORBIDDEN.includes(p)) return `is ${p}, a kernel file system`;
  const tree = FORBIDDEN_TREES.find((t) => p.startsWith(`${t}/`));
  return tree ? `is under ${tree}, a kernel file system` : undefined;
}

/**
 * Why the absolute path `dir` cannot be a state dir, or undefined if it can: it is (or, through symlinks,
 * resolves to) `/`, `/proc`, `/sys`, `/dev` or a path under /proc or /sys; it exists and is not a
 * directory; or it does not exist and its nearest existing ancestor is not a writable directory.
 */
export function stateDirProblem(dir: string): string | undefined {
  const direct = forbidden(dir);
  if (direct) return direct;
  // Walk up to the nearest ancestor that exists.
  const missing: string[] = [];
  let existing = dir;
  for (;;) {
    let isDir: boolean;
    try {
      isDir = statSync(existing).isDirectory();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        const up = dirname(existing);
        if (up === existing) return 'cannot be created: no existing ancestor directory';
        missing.unshift(existing.slice(up.length + (up.endsWith('/') ? 0 : 1)));
        existing = up;
        continue;
      }
      return `cannot be used: ${code ?? String(err)}`;
    }
    if (!isDir) return existing === dir ? 'is an existing file, not a directory' : `cannot be created: ${existing} is a file, not a directory`;
    break;
  }
  let real: string;
  try {
    real = join(realpathSync(existing), ...missing);
  } catch {
    real = dir;
  }
  const viaLink = real === dir ? undefined : forbidden(real);
  if (viaLink) return `resolves to ${real}, which ${viaLink}`;
  if (missing.length) {
    try {
      accessSync(existing, constants.W_OK | constants.X_OK);
    } catch {
      return `cannot be created: ${existing} is not writable`;
    }
  }
  return undefined;
}

/** Why the absolute path `dir` cannot be a working directory, or undefined if it is one. */
export function cwdProblem(dir: string): string | undefined {
  try {
    return statSync(dir).isDirectory() ? undefined : 'is not a directory';
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' || code === 'ENOTDIR' ? 'does not exist' : `cannot be used: ${code ?? String(err)}`;
  }
}
