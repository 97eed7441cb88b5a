import { createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  checkHostKey,
  fingerprintSha256,
  formatKnownHostsLine,
  globMatch,
  knownHostsName,
  knownKeyTypes,
  lookupHostKey,
  parseKnownHosts,
  parseSshPublicKeyBlob,
  type HostKeyStatus,
} from '../../src/transport/ssh/known-hosts.js';

/** A wire-format public key blob: string type, then some key material (content is irrelevant here). */
function blob(type: string, material: Buffer = randomBytes(32)): string {
  const t = Buffer.from(type);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(t.length);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(material.length);
  return Buffer.concat([head, t, len, material]).toString('base64');
}

/** Hash a host the way OpenSSH does, independently of the code under test. */
function hashed(name: string, salt: Buffer = randomBytes(20)): string {
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(name).digest('base64')}`;
}

const ED = 'ssh-ed25519';
const EC = 'ecdsa-sha2-nistp256';
const K1 = blob(ED);
const K2 = blob(ED);
const E1 = blob(EC);

interface Case {
  readonly name: string;
  readonly file: string;
  readonly host: string;
  readonly port: number;
  readonly type?: string;
  readonly key?: string;
  readonly want: HostKeyStatus;
}

const cases: Case[] = [
  // plain names and port handling
  { name: 'plain host, port 22', file: `gpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'host names are case-insensitive', file: `GPU1.Example.COM ${ED} ${K1}`, host: 'gpu1.example.com', port: 22, want: 'ok' },
  { name: 'plain entry does not cover another port', file: `gpu1 ${ED} ${K1}`, host: 'gpu1', port: 2222, want: 'unknown' },
  { name: 'bracketed port entry', file: `[gpu1]:2222 ${ED} ${K1}`, host: 'gpu1', port: 2222, want: 'ok' },
  { name: 'bracketed port entry, other port', file: `[gpu1]:2222 ${ED} ${K1}`, host: 'gpu1', port: 2223, want: 'unknown' },
  { name: 'bracketed :22 is not how port 22 is written', file: `[gpu1]:22 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'unknown' },
  { name: 'IPv6 with port', file: `[fe80::1]:2222 ${ED} ${K1}`, host: 'fe80::1', port: 2222, want: 'ok' },
  { name: 'IPv6 host given in brackets', file: `fe80::1 ${ED} ${K1}`, host: '[fe80::1]', port: 22, want: 'ok' },
  { name: 'comma list', file: `gpu0,gpu1,10.0.0.1 ${ED} ${K1}`, host: '10.0.0.1', port: 22, want: 'ok' },
  { name: 'comment after key', file: `gpu1 ${ED} ${K1} root@head added by hand`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'tabs as separators', file: `gpu1\t${ED}\t${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  // wildcards and negation
  { name: '* wildcard', file: `*.cluster ${ED} ${K1}`, host: 'gpu7.cluster', port: 22, want: 'ok' },
  { name: '* crosses dots', file: `gpu* ${ED} ${K1}`, host: 'gpu7.rack2.cluster', port: 22, want: 'ok' },
  { name: '? matches exactly one', file: `gpu? ${ED} ${K1}`, host: 'gpu12', port: 22, want: 'unknown' },
  { name: '? matches one', file: `gpu? ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'wildcard inside brackets', file: `[10.99.0.*]:2222 ${ED} ${K1}`, host: '10.99.0.12', port: 2222, want: 'ok' },
  { name: 'negation vetoes a match', file: `*.cluster,!gpu3.cluster ${ED} ${K1}`, host: 'gpu3.cluster', port: 22, want: 'unknown' },
  { name: 'negation spares others', file: `*.cluster,!gpu3.cluster ${ED} ${K1}`, host: 'gpu4.cluster', port: 22, want: 'ok' },
  { name: 'negation alone never matches', file: `!gpu3 ${ED} ${K1}`, host: 'gpu4', port: 22, want: 'unknown' },
  // hashed
  { name: 'hashed, port 22', file: `${hashed('gpu1')} ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'hashed, lowercased before hashing', file: `${hashed('gpu1')} ${ED} ${K1}`, host: 'GPU1', port: 22, want: 'ok' },
  { name: 'hashed [host]:port', file: `${hashed('[127.0.0.1]:2222')} ${ED} ${K1}`, host: '127.0.0.1', port: 2222, want: 'ok' },
  { name: 'hashed [host]:port, other port', file: `${hashed('[127.0.0.1]:2222')} ${ED} ${K1}`, host: '127.0.0.1', port: 2223, want: 'unknown' },
  { name: 'hashed plain host does not cover a port', file: `${hashed('127.0.0.1')} ${ED} ${K1}`, host: '127.0.0.1', port: 2222, want: 'unknown' },
  { name: 'hashed, other host', file: `${hashed('gpu1')} ${ED} ${K1}`, host: 'gpu2', port: 22, want: 'unknown' },
  // mismatch
  { name: 'same type, other key', file: `gpu1 ${ED} ${K2}`, host: 'gpu1', port: 22, want: 'mismatch' },
  { name: 'hashed, same type, other key', file: `${hashed('gpu1')} ${ED} ${K2}`, host: 'gpu1', port: 22, want: 'mismatch' },
  { name: 'only another key type known', file: `gpu1 ${EC} ${E1}`, host: 'gpu1', port: 22, want: 'mismatch' },
  { name: 'one of several keys matches', file: `gpu1 ${EC} ${E1}\ngpu1 ${ED} ${K2}\ngpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'other key type presented and known', file: `gpu1 ${ED} ${K1}\ngpu1 ${EC} ${E1}`, host: 'gpu1', port: 22, type: EC, key: E1, want: 'ok' },
  { name: 'other host has our key: still unknown', file: `gpu2 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'unknown' },
  // markers
  { name: '@revoked key', file: `@revoked gpu1 ${ED} ${K1}\ngpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'revoked' },
  { name: '@revoked wildcard', file: `gpu1 ${ED} ${K1}\n@revoked * ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'revoked' },
  { name: '@revoked for another host does not apply', file: `gpu1 ${ED} ${K1}\n@revoked gpu2 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: '@revoked other key is no match', file: `@revoked gpu1 ${ED} ${K2}`, host: 'gpu1', port: 22, want: 'unknown' },
  { name: '@cert-authority is ignored', file: `@cert-authority *.cluster ${ED} ${K1}`, host: 'gpu1.cluster', port: 22, want: 'unknown' },
  { name: '@cert-authority does not cause mismatch', file: `@cert-authority * ${ED} ${K2}\ngpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'unknown marker line is skipped', file: `@bogus gpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'unknown' },
  // noise
  { name: 'comments and blank lines', file: `# gpu1 ${ED} ${K2}\n\n   \n  # x\ngpu1 ${ED} ${K1}\n`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'CRLF line endings', file: `gpu0 ${ED} ${K2}\r\ngpu1 ${ED} ${K1}\r\n`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'malformed lines skipped, rest used', file: `garbage\ngpu1 ${ED}\ngpu1 ${ED} !!notbase64!!\ngpu1 ${ED} ${K1}`, host: 'gpu1', port: 22, want: 'ok' },
  { name: 'line whose blob type differs from its type field is skipped', file: `gpu1 ${ED} ${E1}`, host: 'gpu1', port: 22, want: 'unknown' },
  { name: 'empty file', file: '', host: 'gpu1', port: 22, want: 'unknown' },
];

describe('checkHostKey', () => {
  it.each(cases)('$name → $want', (c) => {
    const entries = parseKnownHosts(c.file, '/test/known_hosts');
    expect(checkHostKey(entries, c.host, c.port, c.type ?? ED, c.key ?? K1)).toBe(c.want);
  });
});

describe('lookupHostKey', () => {
  it('reports the deciding line and the conflicting ones', () => {
    const entries = parseKnownHosts(`# header\ngpu1 ${ED} ${K2}\ngpu2 ${ED} ${K1}\n`, '/k');
    const mismatch = lookupHostKey(entries, 'gpu1', 22, ED, K1);
    expect(mismatch.status).toBe('mismatch');
    expect(mismatch.known.map((e) => `${e.file}:${e.line}`)).toEqual(['/k:2']);
    const ok = lookupHostKey(entries, 'gpu2', 22, ED, K1);
    expect(ok.entry?.line).toBe(3);
  });
});

describe('parseKnownHosts', () => {
  it('keeps marker, key type, blob and comment', () => {
    const [e] = parseKnownHosts(`@revoked a,!b ${ED} ${K1} some comment`, 'f');
    expect(e).toMatchObject({ file: 'f', line: 1, marker: 'revoked', keyType: ED, comment: 'some comment' });
    expect(e?.keyBlob.toString('base64')).toBe(K1);
    expect(e?.hosts).toEqual({
      kind: 'patterns',
      patterns: [
        { pattern: 'a', negated: false },
        { pattern: 'b', negated: true },
      ],
    });
  });

  it('rejects hashed fields with a wrong hash length', () => {
    expect(parseKnownHosts(`|1|${randomBytes(20).toString('base64')}|${randomBytes(8).toString('base64')} ${ED} ${K1}`, 'f')).toEqual([]);
  });
});

describe('knownKeyTypes', () => {
  it('lists the unmarked key types recorded for the host, in file order', () => {
    const entries = parseKnownHosts(
      [`gpu1 ${EC} ${E1}`, `@revoked gpu1 ${ED} ${K2}`, `gpu2 ${ED} ${K1}`, `${hashed('gpu1')} ${ED} ${K1}`, `gpu1 ${EC} ${blob(EC)}`].join('\n'),
      'f',
    );
    expect(knownKeyTypes(entries, 'gpu1', 22)).toEqual([EC, ED]);
    expect(knownKeyTypes(entries, 'gpu3', 22)).toEqual([]);
  });
});

describe('formatKnownHostsLine', () => {
  it.each([
    ['gpu1', 22, `gpu1 ${ED} ${K1}`],
    ['GPU1', 22, `gpu1 ${ED} ${K1}`],
    ['127.0.0.1', 2222, `[127.0.0.1]:2222 ${ED} ${K1}`],
    ['::1', 2222, `[::1]:2222 ${ED} ${K1}`],
  ] as const)('%s:%d → %s', (host, port, want) => {
    expect(formatKnownHostsLine(host, port, ED, K1)).toBe(want);
  });

  it('hashed lines round-trip through the parser and match like OpenSSH hashes', () => {
    const salt = randomBytes(20);
    const line = formatKnownHostsLine('10.0.0.5', 2200, ED, K1, { hashed: true, salt, comment: 'dynsup' });
    expect(line).toBe(`${hashed('[10.0.0.5]:2200', salt)} ${ED} ${K1} dynsup`);
    const entries = parseKnownHosts(line, 'f');
    expect(checkHostKey(entries, '10.0.0.5', 2200, ED, K1)).toBe('ok');
    expect(checkHostKey(entries, '10.0.0.5', 22, ED, K1)).toBe('unknown');
  });
});

describe('helpers', () => {
  it('knownHostsName brackets non-22 ports only', () => {
    expect(knownHostsName('Host', 22)).toBe('host');
    expect(knownHostsName('host', 2022)).toBe('[host]:2022');
    expect(knownHostsName('[::1]', 2022)).toBe('[::1]:2022');
  });

  it.each([
    ['*', '', true],
    ['*', 'anything.at.all', true],
    ['a*b*c', 'axxbyyc', true],
    ['a*b*c', 'axxbyy', false],
    ['*.example.com', 'example.com', false],
    ['h?st', 'host', true],
    ['h?st', 'hst', false],
    ['**x', 'abcx', true],
    ['abc', 'abcd', false],
  ] as const)('globMatch(%j, %j) = %s', (pattern, text, want) => {
    expect(globMatch(pattern, text)).toBe(want);
  });

  it('parseSshPublicKeyBlob reads the type and rejects truncated blobs', () => {
    expect(parseSshPublicKeyBlob(Buffer.from(K1, 'base64'))).toEqual({ keyType: ED, keyBase64: K1 });
    expect(() => parseSshPublicKeyBlob(Buffer.from([0, 0, 0, 20, 65]))).toThrow();
    expect(() => parseSshPublicKeyBlob(Buffer.alloc(2))).toThrow();
  });

  it('fingerprintSha256 matches ssh-keygen -l format', () => {
    // ssh-keygen prints SHA256 of the blob, base64 without padding.
    const fp = fingerprintSha256(K1);
    expect(fp).toMatch(/^SHA256:[A-Za-z0-9+/]{43}$/);
    expect(fingerprintSha256(Buffer.from(K1, 'base64'))).toBe(fp);
  });
});
