/**
 * A fake `nvidia-smi` for tests: an executable in `binDir` that answers the two queries of
 * src/agent/nvidia-smi.ts (`--query-gpu=...` and `--query-compute-apps=...`, csv, in the order of the fields
 * asked for, with or without noheader/nounits) and `-L`, from `state.json` next to it. Put `binDir` first
 * on the PATH of the supervisor/agent under test and change the state with `setState` while it runs
 * (written atomically: the fake never reads half a file).
 *
 * A field given as a string is printed as is ("[N/A]", "[Not Supported]"). `fail` makes every call print
 * it to stderr and exit 9 (a driver that does not answer); `delayMs` delays every answer. Each call appends
 * one line (its arguments) to `calls.log` next to it, so a test can count the calls.
 */
import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

export interface FakeGpu {
  index: number;
  uuid: string;
  memoryUsedMiB: number | string;
  memoryTotalMiB: number | string;
  utilizationPct: number | string;
  name?: string;
}
export interface FakeGpuProcess {
  pid: number;
  gpuUuid: string;
  usedMemoryMiB: number | string;
  name?: string;
}
export interface FakeNvidiaSmiState {
  gpus: FakeGpu[];
  processes: FakeGpuProcess[];
  fail?: string;
  delayMs?: number;
}

const SCRIPT = String.raw`
const fs = require('node:fs');
const path = require('node:path');
const dir = path.dirname(process.argv[1]);
const args = process.argv.slice(2);
try { fs.appendFileSync(path.join(dir, 'calls.log'), args.join(' ') + '\n'); } catch {}
let st;
try { st = JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8')); } catch { st = { gpus: [], processes: [] }; }
const finish = () => {
  if (st.fail) { process.stderr.write(st.fail + '\n'); process.exit(9); }
  const fmt = (args.find((a) => a.startsWith('--format=')) || '--format=csv').slice(9).split(',');
  const header = !fmt.includes('noheader');
  const units = !fmt.includes('nounits');
  const q = args.find((a) => a.startsWith('--query-gpu=') || a.startsWith('--query-compute-apps='));
  if (args.includes('-L')) {
    for (const g of st.gpus) process.stdout.write('GPU ' + g.index + ': ' + (g.name || 'NVIDIA H200') + ' (UUID: ' + g.uuid + ')\n');
    return;
  }
  if (!q) { process.stderr.write('fake nvidia-smi: only --query-gpu, --query-compute-apps and -L\n'); process.exit(2); }
  const fields = q.slice(q.indexOf('=') + 1).split(',');
  const isGpu = q.startsWith('--query-gpu=');
  const unit = { 'memory.used': ' MiB', 'memory.total': ' MiB', 'utilization.gpu': ' %', used_memory: ' MiB' };
  const val = (o, f) => {
    const v = isGpu
      ? { index: o.index, uuid: o.uuid, 'memory.used': o.memoryUsedMiB, 'memory.total': o.memoryTotalMiB, 'utilization.gpu': o.utilizationPct, name: o.name || 'NVIDIA H200' }[f]
      : { pid: o.pid, gpu_uuid: o.gpuUuid, used_memory: o.usedMemoryMiB, process_name: o.name || 'python3' }[f];
    if (v === undefined) { process.stderr.write('Field "' + f + '" is not a valid field to query.\n'); process.exit(2); }
    return typeof v === 'number' && units && unit[f] ? v + unit[f] : String(v);
  };
  const list = isGpu ? st.gpus : st.processes;
  if (header) process.stdout.write(fields.join(', ') + '\n');
  for (const o of list) process.stdout.write(fields.map((f) => val(o, f)).join(', ') + '\n');
};
if (st.delayMs) setTimeout(finish, st.delayMs); else finish();
`;

export function installFakeNvidiaSmi(dir: string): { binDir: string; setState(s: FakeNvidiaSmiState): void; calls(): string[] } {
  const binDir = join(dir, 'fake-nvidia-smi');
  mkdirSync(binDir, { recursive: true });
  const bin = join(binDir, 'nvidia-smi');
  // A .cjs body run by this node by absolute path: no dependence on `node` being on the caller's PATH, nor
  // on a package.json "type" above binDir.
  writeFileSync(join(binDir, 'nvidia-smi.cjs'), SCRIPT);
  writeFileSync(bin, `#!/bin/sh\nexec '${process.execPath.replaceAll("'", "'\\''")}' "$(dirname "$0")/nvidia-smi.cjs" "$@"\n`);
  chmodSync(bin, 0o755);
  const stateFile = join(binDir, 'state.json');
  const setState = (s: FakeNvidiaSmiState): void => {
    const tmp = `${stateFile}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(s));
    renameSync(tmp, stateFile);
  };
  if (!existsSync(stateFile)) setState({ gpus: [], processes: [] });
  const calls = (): string[] => {
    try {
      return readFileSync(join(binDir, 'calls.log'), 'utf8').split('\n').filter(Boolean);
    } catch {
      return [];
    }
  };
  return { binDir, setState, calls };
}
