import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';

describe('configuration', () => {
  it('LNbits needs its URL and both keys, and a key is never echoed in the error', () => {
    const err = (() => {
      try {
        loadConfig({ PAYMENT_PROVIDER: 'lnbits', LNBITS_ADMIN_KEY: 'secret-admin-key', LNBITS_URL: 'not a url' });
      } catch (e) {
        return e as ConfigError;
      }
    })();
    expect(err).toBeInstanceOf(ConfigError);
    expect(err!.problems.join('\n')).toMatch(/LNBITS_URL/);
    expect(err!.problems.join('\n')).toMatch(/LNBITS_INVOICE_KEY: is required with PAYMENT_PROVIDER=lnbits/);
    expect(err!.message).not.toContain('secret-admin-key');
    expect(() => loadConfig({ LNBITS_INVOICE_KEY: 'k', LIGHTNING_NETWORK: 'mainnet' })).toThrow(/LIGHTNING_NETWORK/);
  });

  it('the Lightning network defaults to regtest for the stub and bitcoin for LNbits', () => {
    expect(loadConfig({}).LIGHTNING_NETWORK).toBe('regtest');
    const lnbits = { PAYMENT_PROVIDER: 'lnbits', LNBITS_URL: 'http://lnbits.local', LNBITS_INVOICE_KEY: 'i', LNBITS_ADMIN_KEY: 'a' };
    expect(loadConfig(lnbits).LIGHTNING_NETWORK).toBe('bitcoin');
    expect(loadConfig({ ...lnbits, LIGHTNING_NETWORK: 'signet' }).LIGHTNING_NETWORK).toBe('signet');
  });

  it('roles: api and worker need a shared Postgres; WORKER_CONCURRENCY is the slots, MAX_CONCURRENT_RUNS its former name', () => {
    expect(loadConfig({}).PROCESS_ROLE).toBe('all');
    expect(() => loadConfig({ PROCESS_ROLE: 'worker' })).toThrow(/PROCESS_ROLE: worker needs DATABASE_URL/);
    expect(() => loadConfig({ PROCESS_ROLE: 'leader', DATABASE_URL: 'postgres://x/y' })).toThrow(/PROCESS_ROLE/);
    expect(loadConfig({ PROCESS_ROLE: 'api', DATABASE_URL: 'postgres://x/y' }).PROCESS_ROLE).toBe('api');
    expect(loadConfig({ WORKER_CONCURRENCY: '4' })).toMatchObject({ WORKER_CONCURRENCY: 4, MAX_CONCURRENT_RUNS: 4 });
    expect(loadConfig({ MAX_CONCURRENT_RUNS: '7' })).toMatchObject({ WORKER_CONCURRENCY: 7, MAX_CONCURRENT_RUNS: 7 });
    expect(loadConfig({ MAX_CONCURRENT_RUNS: '7', WORKER_CONCURRENCY: '3' }).MAX_CONCURRENT_RUNS).toBe(3);
  });

  it('.env.example gives every variable it sets its default', () => {
    const env = Object.fromEntries(
      readFileSync(new URL('../.env.example', import.meta.url), 'utf8')
        .split('\n')
        .filter((l) => /^[A-Z0-9_]+=/.test(l))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    expect(Object.keys(env)).toEqual(expect.arrayContaining(['PAYMENT_PROVIDER', 'INVOICE_EXPIRY_S', 'REFUND_MAX_ATTEMPTS', 'LNBITS_TIMEOUT_MS']));
    expect(loadConfig(env)).toEqual(loadConfig({}));
  });
});
