import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { runCli } from '../src/cli/blocklist';
import { silentLogger } from '../src/observability/logger';
import { ApiKeyAuthenticator } from '../src/auth/api-keys';
import { SuppressionList } from '../src/policy/suppression-list';
import { startDynalite, type Dynalite } from './helpers/dynalite';

const ROOT = path.resolve(__dirname, '..');
const env = { DYNAMODB_TABLE: 'cli-suppression', DYNAMODB_API_KEYS_TABLE: 'cli-api-keys' };

describe('blocklist CLI', () => {
  let db: Dynalite;
  const cli = async (...args: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(args, {
      env,
      out: (l) => out.push(l),
      err: (l) => err.push(l),
      client: db.client(),
    });
    return { code, out: out.join('\n'), err: err.join('\n') };
  };

  before(async () => {
    db = await startDynalite();
    await db.createTable(env.DYNAMODB_TABLE);
    await db.createTable(env.DYNAMODB_API_KEYS_TABLE, 'api_key_hash');
  });
  after(async () => {
    await db.close();
  });

  test('add, check (address and domain, any case), list, remove', async () => {
    assert.equal((await cli('add', 'Someone@Example.COM', '--reason', 'requested')).code, 0);
    assert.equal((await cli('add', '@Blocked.example')).code, 0);
    assert.match(
      (await cli('check', 'SOMEONE@example.com')).out,
      /suppressed \(entry someone@example.com, reason requested\)/,
    );
    assert.match((await cli('check', 'x@blocked.example')).out, /suppressed \(entry @blocked.example/);
    assert.match((await cli('check', 'other@example.com')).out, /not suppressed/);
    const list = await cli('list');
    assert.deepEqual(
      list.out.split('\n').map((l) => l.split('\t').slice(0, 2)),
      [
        ['@blocked.example', 'manual'],
        ['someone@example.com', 'requested'],
      ],
    );
    assert.equal((await cli('remove', 'someone@example.com')).code, 0);
    assert.match((await cli('check', 'someone@example.com')).out, /not suppressed/);
    const again = await cli('remove', 'someone@example.com');
    assert.equal(again.code, 1);
    assert.match(again.err, /not on the suppression list/);
  });

  test('Unicode domains and quoted local parts are stored under the key the relay looks up', async () => {
    const added = await cli('add', 'Victim@Bücher.Example');
    assert.equal(added.code, 0);
    assert.match(added.out, /suppressed victim@xn--bcher-kva\.example/);
    assert.equal((await cli('add', '@Blöcked.example')).code, 0);
    assert.equal((await cli('add', '"Quoted"@Example.com')).code, 0);
    const keys = (await cli('list')).out.split('\n').map((l) => l.split('\t')[0]);
    for (const k of ['victim@xn--bcher-kva.example', '@xn--blcked-xxa.example', 'quoted@example.com']) {
      assert.ok(keys.includes(k), `${k} in ${keys.join(', ')}`);
    }
    // The relay's own lookup (the same SuppressionList the dispatcher uses) finds them.
    const list = new SuppressionList({
      client: db.client(),
      table: env.DYNAMODB_TABLE,
      cacheTtlMs: 0,
      cacheMax: 1,
      logger: silentLogger,
      recoveryProbeMs: 0,
    });
    try {
      const d = await list.check([
        'victim@xn--bcher-kva.example',
        'anyone@xn--blcked-xxa.example',
        '"quoted"@example.com',
        'other@xn--bcher-kva.example',
      ]);
      assert.deepEqual(d.allowed, ['other@xn--bcher-kva.example']);
    } finally {
      await list.close();
    }
    assert.match((await cli('check', 'VICTIM@xn--bcher-kva.example')).out, /: suppressed/);
    assert.equal((await cli('remove', 'victim@bücher.example')).code, 0, 'removed by its Unicode spelling');
    const bad = await cli('add', 'a@xn--zz.example');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /not a valid \(IDNA\) domain/);
  });

  test('usage errors exit 1 with a message; DynamoDB errors exit 2', async () => {
    assert.equal((await cli()).code, 1);
    const bad = await cli('add', 'not-an-address');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /not an address or @domain/);
    assert.equal((await cli('frobnicate', 'a@b.c')).code, 1);
    const noTable = await runCli(['check', 'a@b.c'], {
      env: {},
      out: () => {},
      err: () => {},
      client: db.client(),
    });
    assert.equal(noTable, 1);
    const missing = await runCli(['list'], {
      env: { DYNAMODB_TABLE: 'missing-table' },
      out: () => {},
      err: () => {},
      client: db.client(),
    });
    assert.equal(missing, 2);
  });

  test('apikey add prints a key once; it authenticates; disable and remove', async () => {
    const added = await cli(
      'apikey',
      'add',
      'newsletter',
      '--from-domain',
      '@News.example',
      '--from-domain',
      'b.example',
    );
    assert.equal(added.code, 0);
    const key = added.out.trim();
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!added.err.includes(key), 'the key is printed once, on stdout');
    const auth = new ApiKeyAuthenticator({
      client: db.client(),
      table: env.DYNAMODB_API_KEYS_TABLE,
      cacheTtlMs: 0,
      logger: silentLogger,
    });
    assert.deepEqual(await auth.authenticate('any', key), {
      user: 'newsletter',
      allowedFromDomains: ['news.example', 'b.example'],
      tenant: { name: 'newsletter', priority: 'normal' },
    });
    assert.match(
      (await cli('apikey', 'list')).out,
      /^[0-9a-f]{12}\tnewsletter\tenabled\tnews.example,b.example$/m,
    );
    assert.equal((await cli('apikey', 'disable', 'newsletter')).code, 0);
    assert.equal(await auth.authenticate('any', key), null);
    assert.equal((await cli('apikey', 'enable', 'newsletter')).code, 0);
    assert.equal((await auth.authenticate('any', key))?.user, 'newsletter');
    assert.equal((await cli('apikey', 'remove', 'newsletter')).code, 0);
    assert.equal(await auth.authenticate('any', key), null);
    assert.equal((await cli('apikey', 'remove', 'newsletter')).code, 1);
  });

  test('apikey add and update set the tenant policy, checked as the relay reads it', async () => {
    const added = await cli(
      'apikey',
      'add',
      'billing',
      '--rate-limit',
      '2.5',
      '--daily-quota',
      '1000',
      '--configuration-set',
      'billing-events',
      '--tag',
      'app=billing',
      '--tag',
      'team=payments',
      '--priority',
      'high',
    );
    assert.equal(added.code, 0, added.err);
    const key = added.out.trim();
    const auth = new ApiKeyAuthenticator({
      client: db.client(),
      table: env.DYNAMODB_API_KEYS_TABLE,
      cacheTtlMs: 0,
      logger: silentLogger,
    });
    assert.deepEqual((await auth.authenticate('any', key))?.tenant, {
      name: 'billing',
      priority: 'high',
      rateLimit: 2.5,
      dailyQuota: 1000,
      configurationSet: 'billing-events',
      tags: { app: 'billing', team: 'payments' },
    });
    assert.match(
      (await cli('apikey', 'list')).out,
      /\tbilling\tenabled\t\tpriority=high rate_limit=2.5 daily_quota=1000 configuration_set=billing-events tags=app=billing,team=payments$/m,
    );

    const updated = await cli(
      'apikey',
      'update',
      'billing',
      '--priority',
      'bulk',
      '--rate-limit',
      'none',
      '--tag',
      'none',
    );
    assert.equal(updated.code, 0, updated.err);
    assert.match(updated.out, /updated API key billing: priority, -rate_limit, -tags/);
    assert.deepEqual((await auth.authenticate('any', key))?.tenant, {
      name: 'billing',
      priority: 'bulk',
      dailyQuota: 1000,
      configurationSet: 'billing-events',
    });

    // Refused like the relay refuses them; nothing is written.
    for (const [args, message] of [
      [['--rate-limit', '-1'], /--rate-limit: must be > 0/],
      [['--rate-limit', 'fast'], /--rate-limit: "fast" is not a number/],
      [['--daily-quota', '1.5'], /--daily-quota: must be a whole number/],
      [['--priority', 'urgent'], /--priority: must be one of high, normal, bulk/],
      [['--tag', 'app=bill ing'], /--tag: only letters, digits/],
      [['--tag', `app=${'x'.repeat(300)}`], /--tag: longer than 256/],
      [['--tag', 'novalue'], /--tag: "novalue" is not name=value/],
      [['--configuration-set', 'a b'], /--configuration-set: only letters/],
    ] as const) {
      const add = await cli('apikey', 'add', 'rejected', ...args);
      assert.equal(add.code, 1, `add ${args.join(' ')}`);
      assert.match(add.err, message);
      const update = await cli('apikey', 'update', 'billing', ...args);
      assert.equal(update.code, 1, `update ${args.join(' ')}`);
      assert.match(update.err, message);
    }
    assert.doesNotMatch((await cli('apikey', 'list')).out, /rejected/);
    assert.equal((await auth.authenticate('any', key))?.tenant?.priority, 'bulk', 'unchanged');
    assert.match((await cli('apikey', 'add', 'x', '--priority', 'none')).err, /only with apikey update/);
    assert.match((await cli('apikey', 'update', 'billing')).err, /needs a policy flag/);
    assert.equal((await cli('apikey', 'update', 'no-such-key', '--priority', 'high')).code, 1);
    assert.equal((await cli('apikey', 'remove', 'billing')).code, 0);
  });

  test('the script runs as `npm run blocklist` would (tsx, environment only)', async () => {
    await cli('add', 'script@example.com');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', path.join('src', 'cli', 'blocklist.ts'), 'check', 'Script@Example.com'],
      { cwd: ROOT, env: { ...process.env, ...db.env, ...env }, timeout: 30_000 },
    );
    assert.match(stdout, /script@example.com: suppressed/);
  });
});
