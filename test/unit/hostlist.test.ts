// @vitest-environment node
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compressHostlist, expandHostlist, HostlistError } from '../../src/slurm/hostlist.js';

const run = promisify(execFile);

const expandCases: Array<[string, string[]]> = [
  ['login2', ['login2']],
  ['gpu-[01-04,07],login2', ['gpu-01', 'gpu-02', 'gpu-03', 'gpu-04', 'gpu-07', 'login2']],
  ['n[1-3]-ib', ['n1-ib', 'n2-ib', 'n3-ib']],
  ['rack[1-2]-n[01-02]', ['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02']],
  ['n[1-2][3-4]', ['n13', 'n14', 'n23', 'n24']],
  ['a[1-2]b[3-4]c', ['a1b3c', 'a1b4c', 'a2b3c', 'a2b4c']],
  ['n[009-011]', ['n009', 'n010', 'n011']],
  ['n[8-10]', ['n8', 'n9', 'n10']],
  ['n[08-10]', ['n08', 'n09', 'n10']],
  ['n[01-3]', ['n01', 'n02', 'n03']],
  ['n[1-03]', ['n1', 'n2', 'n3']], // width comes from the low bound, as in Slurm
  ['n0[1-2]', ['n01', 'n02']],
  ['n[5]', ['n5']],
  ['n[0-0]', ['n0']],
  ['n[1,1]', ['n1', 'n1']], // duplicates kept
  ['a,b,a', ['a', 'b', 'a']],
  ['node[1-3],node[2-5]', ['node1', 'node2', 'node3', 'node2', 'node3', 'node4', 'node5']],
  ['n[1-2],m[3],o', ['n1', 'n2', 'm3', 'o']],
  ['  n1 , n2  ', ['n1', 'n2']],
  ['host1 host2', ['host1', 'host2']],
  ['gpu-[ 01 - 02 , 07 ]', ['gpu-01', 'gpu-02', 'gpu-07']],
  ['h.example.org,h[1-2].example.org', ['h.example.org', 'h1.example.org', 'h2.example.org']],
  ['n[98-101]', ['n98', 'n99', 'n100', 'n101']],
];

describe('expandHostlist', () => {
  it.each(expandCases)('%s', (expr, hosts) => {
    expect(expandHostlist(expr)).toEqual(hosts);
  });

  it('expands large ranges', () => {
    const hosts = expandHostlist('gpu[0001-1024]');
    expect(hosts).toHaveLength(1024);
    expect(hosts[0]).toBe('gpu0001');
    expect(hosts[1023]).toBe('gpu1024');
  });
});

const errorCases: Array<[string, RegExp]> = [
  ['', /empty expression/],
  ['   ', /empty expression/],
  ['n[1-3', /unbalanced "\["/],
  ['n[1,2', /unbalanced "\["/],
  ['foo]', /unbalanced "\]"/],
  ['n1-3]', /unbalanced "\]"/],
  ['a[[1]]', /nested "\["/],
  ['n[3-1]', /reversed range "3-1"/],
  ['n[]', /empty "\[\]"/],
  ['n[1,,2]', /empty element/],
  ['n[1-]', /not a range of numbers/],
  ['n[-1]', /not a range of numbers/],
  ['n[a-c]', /not a range of numbers/],
  ['n[1-2-3]', /not a range of numbers/],
  ['n[x]', /"x" is not a number/],
  ['a,,b', /empty host name/],
  [',a', /empty host name/],
  ['a,', /empty host name/],
  ['a, ,b', /empty host name/],
  ['n[1-100000000]', /more than 65536 hosts/],
  ['n[1-300]x[1-300]', /more than 65536 hosts/],
];

describe('expandHostlist errors', () => {
  it.each(errorCases)('%j', (expr, message) => {
    let caught: unknown;
    try {
      expandHostlist(expr);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(HostlistError);
    expect(caught).toBeInstanceOf(Error);
    const e = caught as HostlistError;
    expect(e.code).toBe('E_HOSTLIST');
    expect(e.name).toBe('HostlistError');
    expect(e.message).toMatch(message);
    expect(e.message).toContain(JSON.stringify(expr)); // says which expression
  });

  it('reports the offset of the problem', () => {
    try {
      expandHostlist('gpu-[01-04],n[3-1]');
      expect.unreachable();
    } catch (err) {
      expect((err as HostlistError).offset).toBe(14);
    }
  });

  it('honours maxHosts', () => {
    expect(() => expandHostlist('n[1-10]', { maxHosts: 9 })).toThrow(HostlistError);
    expect(expandHostlist('n[1-10]', { maxHosts: 10 })).toHaveLength(10);
    expect(() => expandHostlist('a[1-5],b[1-5]', { maxHosts: 9 })).toThrow(/more than 9 hosts/);
  });
});

const compressCases: Array<[string[], string]> = [
  [['gpu-01', 'gpu-02', 'gpu-03', 'gpu-04', 'gpu-07', 'login2'], 'gpu-[01-04,07],login2'],
  [['n1-ib', 'n2-ib', 'n3-ib'], 'n[1-3]-ib'],
  [['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02'], 'rack1-n[01-02],rack2-n[01-02]'],
  [['n8', 'n9', 'n10'], 'n[8-10]'],
  [['n08', 'n09', 'n10'], 'n[08-10]'],
  [['n9', 'n010'], 'n[9,010]'],
  [['n3', 'n1', 'n2', 'n1'], 'n[3,1-2,1]'], // order kept, like scontrol show hostlist
  [['n1', 'n2', 'm1', 'n3'], 'n[1-2],m1,n3'],
  [['a', 'b', 'c'], 'a,b,c'],
  [['x'], 'x'],
  [['n0', 'n00', 'n000'], 'n[0,00,000]'],
  [[], ''],
];

describe('compressHostlist', () => {
  it.each(compressCases)('%j -> %s', (hosts, expr) => {
    expect(compressHostlist(hosts)).toBe(expr);
    if (hosts.length > 0) expect(expandHostlist(expr)).toEqual(hosts); // exact inverse
  });

  it('round-trips every expansion case', () => {
    for (const [, hosts] of expandCases) {
      expect(expandHostlist(compressHostlist(hosts))).toEqual(hosts);
    }
  });

  it.each([[['']], [['a,b']], [['n[1]']], [['a b']]])('rejects host %j', (hosts) => {
    expect(() => compressHostlist(hosts)).toThrow(HostlistError);
  });
});

// Cross-check with the real Slurm parser. `scontrol show hostnames` parses
// locally (no slurmctld needed) but refuses to start without a slurm.conf that
// names a ClusterName and SlurmctldHost, so the test writes a minimal one.
// Slurm 22.05 rejects text after the last bracket (`n[1-3]-ib`), so only
// expressions both parsers accept are compared.
describe('agrees with scontrol', () => {
  let dir = '';
  let env: NodeJS.ProcessEnv = {};

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dynsup-hostlist-'));
    const conf = join(dir, 'slurm.conf');
    await writeFile(conf, 'ClusterName=hostlist-test\nSlurmctldHost=localhost\n');
    env = { ...process.env, SLURM_CONF: conf };
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  // scontrol exits 0 even for an invalid hostlist and says so on stderr only.
  const scontrol = async (...args: string[]): Promise<string> => {
    const { stdout, stderr } = await run('scontrol', args, { env, timeout: 20_000 });
    expect(stderr).toBe('');
    expect(stdout).not.toBe('');
    return stdout;
  };

  const slurmExprs = [
    'gpu-[01-04,07],login2',
    'rack[1-2]-n[01-02]',
    'n[1-2][3-4]',
    'a[1-2]b[3-4]',
    'n[009-011]',
    'n[8-10]',
    'n[08-10]',
    'n[01-3]',
    'n[1-03]',
    'n0[1-2]',
    'n[1,1]',
    'a,b,a',
    'node[1-3],node[2-5]',
    'n[1-2],m[3],o',
    ' n1 , n2 ',
    'host1 host2',
    'n[98-101]',
  ];

  it.each(slurmExprs)('show hostnames %j', async (expr) => {
    const out = await scontrol('show', 'hostnames', expr);
    expect(expandHostlist(expr)).toEqual(out.split('\n').filter((l) => l !== ''));
  });

  const slurmLists = [
    ['gpu-01', 'gpu-02', 'gpu-03', 'gpu-04', 'gpu-07', 'login2'],
    ['n3', 'n1', 'n2', 'n1'],
    ['n01', 'n02', 'n3', 'n10', 'n9'],
    ['n8', 'n9', 'n10', 'n08'],
    ['rack1-n01', 'rack1-n02', 'rack2-n01', 'rack2-n02'],
    ['n0', 'n00', 'n000'],
  ];

  it.each(slurmLists)('show hostlist %j', async (...hosts) => {
    const out = await scontrol('show', 'hostlist', hosts.join(','));
    expect(compressHostlist(hosts)).toBe(out.trim());
  });
});
