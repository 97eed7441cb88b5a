/** Talking to Slurm about a running job: is it still there, and asking its batch step to stop. */
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';

/** The job's state (RUNNING, PENDING, COMPLETING, ...), or null once squeue no longer lists it. */
export async function jobState(jobId: string, env: NodeJS.ProcessEnv = process.env): Promise<string | null> {
  const r = await execa('squeue', ['-h', '-j', jobId, '-o', '%T'], { env, reject: false, timeout: 30_000 }).catch(() => null);
  if (!r || r.exitCode !== 0) return null;
  return String(r.stdout).trim().split('\n')[0] || null;
}

/**
 * SIGTERM to the batch step only (the supervisor, which stops the workers in order and exits, ending the
 * job), then wait for the job to leave squeue. Returns false if the job was not running.
 */
export async function stopJob(jobId: string, timeoutMs: number, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  if (!(await jobState(jobId, env))) return false;
  const r = await execa('scancel', ['--batch', '--signal=TERM', jobId], { env, reject: false, timeout: 30_000 }).catch(() => null);
  if (!r || r.exitCode !== 0) return false;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!(await jobState(jobId, env))) return true;
    await sleep(500);
  }
  // Still there: Slurm itself ends it (every step, every process).
  await execa('scancel', [jobId], { env, reject: false, timeout: 30_000 }).catch(() => undefined);
  return true;
}
