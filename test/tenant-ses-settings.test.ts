/**
 * A tenant's SES settings reach SES (issue 11): its configuration set (over SES_CONFIGURATION_SET) and its
 * message tags — over SMTP as `X-SES-CONFIGURATION-SET` and `X-SES-MESSAGE-TAGS: name=value, name2=value2`
 * header fields prepended to the spooled bytes (the fake SES over STARTTLS, the real SesSmtpTransport
 * through the dispatcher), over the API as `ConfigurationSetName` and `EmailTags` (the local SES v2
 * endpoint, the real SDK client). Tags SES would refuse are left out, never sent broken; a message that
 * names its own configuration set keeps it; header values cannot inject a line.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { SesApiTransport } from '../src/egress/transport/ses-api-transport';
import { messageTagsValue } from '../src/egress/transport/ses-headers';
import { silentLogger } from '../src/observability/logger';
import type { Tenant } from '../src/types';
import { messageBody, startEgress, type EgressHarness } from './helpers/egress-harness';
import { startFakeSesApi, type FakeSesApi } from './helpers/fake-ses-api';
import { startFakeSes, type FakeSes } from './helpers/fake-ses';
import { markerOf, numberedMessage } from './helpers/mail';
import {
  fakeSesEnv,
  metricValue,
  startRelayProcess,
  stopRelayProcess,
  tempDir,
  type RelayProcess,
} from './helpers/relay-process';
import bcrypt from 'bcryptjs';
import nodemailer from 'nodemailer';

const TENANT: Tenant = {
  name: 'shop',
  priority: 'normal',
  configurationSet: 'shop-events',
  tags: { campaign: 'spring-2026', team: 'checkout_1' },
};

const headerSection = (body: Buffer) => body.toString('latin1').split(/\r?\n\r?\n/)[0];
const fields = (body: Buffer, name: string) =>
  headerSection(body)
    .split(/\r?\n/)
    .filter((l) => l.toLowerCase().startsWith(`${name.toLowerCase()}:`));

describe('over SMTP (fake SES, dispatcher and SesSmtpTransport)', () => {
  let h: EgressHarness;
  before(async () => {
    h = await startEgress({ rate: 1000, burst: 50 });
  });
  after(() => h.close());

  test("the tenant's configuration set and tags are prepended as SES header fields", async () => {
    h.ses.reset();
    await h.store(['a@example.com'], { body: messageBody('tenant'), tenant: TENANT });
    await h.ses.waitFor(1, 10_000);
    const body = h.ses.messages[0].body;
    assert.deepEqual(fields(body, 'X-SES-CONFIGURATION-SET'), ['X-SES-CONFIGURATION-SET: shop-events']);
    assert.deepEqual(fields(body, 'X-SES-MESSAGE-TAGS'), [
      'X-SES-MESSAGE-TAGS: campaign=spring-2026, team=checkout_1',
    ]);
    assert.ok(body.toString('latin1').endsWith(messageBody('tenant')), 'the spooled bytes follow unchanged');
  });

  test('a message without a tenant gets neither; one naming its own set keeps it', async () => {
    h.ses.reset();
    await h.store(['b@example.com'], { body: messageBody('plain') });
    const own = `X-SES-CONFIGURATION-SET: own-set\r\n${messageBody('own')}`;
    await h.store(['c@example.com'], { body: own, tenant: { name: 'no-set', priority: 'normal' } });
    await h.ses.waitFor(2, 10_000);
    const plain = h.ses.messages.find((m) => m.recipients[0] === 'b@example.com')!.body;
    assert.deepEqual(fields(plain, 'X-SES-CONFIGURATION-SET'), []);
    assert.deepEqual(fields(plain, 'X-SES-MESSAGE-TAGS'), []);
    const kept = h.ses.messages.find((m) => m.recipients[0] === 'c@example.com')!.body;
    assert.deepEqual(fields(kept, 'X-SES-CONFIGURATION-SET'), ['X-SES-CONFIGURATION-SET: own-set']);
  });

  test("a tenant's set and tags are enforced: the sender's own headers (folded, any case) are replaced", async () => {
    h.ses.reset();
    const own =
      `x-ses-configuration-set: other-tenants-pool\r\n` +
      `X-SES-Configuration-Set:\r\n\tfolded-set\r\n` +
      `X-SES-MESSAGE-TAGS: campaign=spoofed\r\n` +
      messageBody('own') +
      `X-SES-CONFIGURATION-SET: in the body stays\r\n`;
    await h.store(['c@example.com'], { body: own, tenant: TENANT });
    await h.ses.waitFor(1, 10_000);
    const body = h.ses.messages[0].body;
    assert.deepEqual(fields(body, 'X-SES-CONFIGURATION-SET'), ['X-SES-CONFIGURATION-SET: shop-events']);
    assert.ok(!body.toString('latin1').includes('folded-set'), 'the continuation line went with its field');
    assert.ok(
      body.toString('latin1').endsWith(`${messageBody('own')}X-SES-CONFIGURATION-SET: in the body stays\r\n`),
      'the rest of the header section and the body are unchanged',
    );
    assert.deepEqual(
      fields(body, 'X-SES-MESSAGE-TAGS'),
      ['X-SES-MESSAGE-TAGS: campaign=spring-2026, team=checkout_1'],
      "the tenant's tags replace the sender's, as EmailTags do with the API",
    );
  });

  test('tags SES would refuse are left out: no header injection, no broken list', async () => {
    assert.equal(
      messageTagsValue({
        ok: 'v',
        'bad name': 'x',
        evil: 'a\r\nBcc: victim@example.com',
        'x=y': 'z',
        k: 'a,b',
      }),
      'ok=v',
    );
    assert.equal(messageTagsValue({ '': 'x' }), undefined);
    assert.equal(messageTagsValue({ long: 'v'.repeat(256) }), undefined);
    h.ses.reset();
    const hostile: Tenant = { name: 'x', priority: 'bulk', tags: { evil: 'a\r\nBcc: victim@example.com' } };
    await h.store(['d@example.com'], { body: messageBody('hostile'), tenant: hostile });
    await h.ses.waitFor(1, 10_000);
    const body = h.ses.messages[0].body;
    assert.deepEqual(fields(body, 'X-SES-MESSAGE-TAGS'), []);
    assert.deepEqual(fields(body, 'Bcc'), []);
    assert.deepEqual(h.ses.messages[0].recipients, ['d@example.com']);
  });
});

describe('over the API (local SES v2 endpoint, real SDK client)', () => {
  let api: FakeSesApi;
  let t: SesApiTransport;
  before(async () => {
    api = await startFakeSesApi();
    t = new SesApiTransport({
      region: 'eu-west-1',
      endpoint: api.url,
      credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' },
      connectionTimeoutMs: 2000,
      configurationSet: 'default-set',
      logger: silentLogger,
    });
  });
  after(async () => {
    await t.close();
    await api.close();
  });

  const tx = (body: string, extra: { configurationSet?: string; tags?: Record<string, string> } = {}) => {
    const buf = Buffer.from(body);
    return {
      id: 'Q1',
      mailFrom: 'app@example.com',
      recipients: ['a@example.com'],
      body: () => Readable.from([buf]),
      size: buf.length,
      ...extra,
    };
  };

  test("ConfigurationSetName is the tenant's set (over the default), EmailTags its tags", async () => {
    api.reset();
    const res = await t.send(tx(messageBody('api'), { configurationSet: 'shop-events', tags: TENANT.tags }));
    assert.equal(res[0].class, 'delivered');
    assert.equal(api.sends[0].configurationSet, 'shop-events');
    assert.deepEqual(api.sends[0].tags, { campaign: 'spring-2026', team: 'checkout_1' });
    assert.equal(api.sends[0].raw.toString(), messageBody('api'), 'the raw content is unchanged');
  });

  test("a tenant's set is enforced over the message's own header, which is removed from the raw content", async () => {
    api.reset();
    const own = `X-SES-CONFIGURATION-SET: other-tenants-pool\r\n${messageBody('api-own')}`;
    await t.send(tx(own, { configurationSet: 'shop-events' }));
    assert.equal(api.sends[0].configurationSet, 'shop-events');
    assert.equal(api.sends[0].raw.toString(), messageBody('api-own'));
    api.reset();
    await t.send(tx(own));
    assert.equal(api.sends[0].configurationSet, undefined, "without a tenant's set the sender's header wins");
    assert.equal(api.sends[0].raw.toString(), own);
  });

  test('without a tenant: the default set and no tags', async () => {
    api.reset();
    await t.send(tx(messageBody('api-plain')));
    assert.equal(api.sends[0].configurationSet, 'default-set');
    assert.equal(api.sends[0].tags, undefined);
  });
});

describe('from AUTH to SES: a relay process (SMTP_USER_POLICY_FILE, fake SES over STARTTLS)', () => {
  let ses: FakeSes;
  let relay: RelayProcess;
  let dir: string;
  before(async () => {
    ses = await startFakeSes();
    dir = tempDir();
    const policyFile = path.join(dir, 'policy.json');
    fs.writeFileSync(
      policyFile,
      JSON.stringify({
        shop: { configuration_set: 'shop-events', tags: { campaign: 'spring-2026' }, priority: 'high' },
      }),
    );
    const hash = bcrypt.hashSync('pw', 4);
    relay = await startRelayProcess({
      env: {
        ...fakeSesEnv(ses.port),
        SMTP_USERS: `shop:${hash},plain:${hash}`,
        SMTP_USER_POLICY_FILE: policyFile,
        SMTP_ALLOW_INSECURE_AUTH: 'true',
        SES_CONFIGURATION_SET: 'default-set',
        SES_RATE_LIMIT: '100',
      },
    });
  });
  after(async () => {
    await stopRelayProcess(relay);
    await ses.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const send = async (user: string, marker: string) => {
    const client = nodemailer.createTransport({
      host: '127.0.0.1',
      port: relay.smtpPort,
      secure: false,
      ignoreTLS: true,
      auth: { user, pass: 'pw' },
    });
    try {
      await client.sendMail(numberedMessage(marker, ['someone@example.net']));
    } finally {
      client.close();
    }
  };

  test("a user's policy goes with its mail to SES; another user's mail gets the default set", async () => {
    await send('shop', 'from-shop');
    await send('plain', 'from-plain');
    await ses.waitFor(2, 20_000);
    const byMarker = new Map(ses.messages.map((m) => [markerOf(m.body), m.body]));
    const shop = byMarker.get('from-shop');
    const plain = byMarker.get('from-plain');
    assert.ok(shop && plain);
    assert.deepEqual(fields(shop, 'X-SES-CONFIGURATION-SET'), ['X-SES-CONFIGURATION-SET: shop-events']);
    assert.deepEqual(fields(shop, 'X-SES-MESSAGE-TAGS'), ['X-SES-MESSAGE-TAGS: campaign=spring-2026']);
    assert.deepEqual(fields(plain, 'X-SES-CONFIGURATION-SET'), ['X-SES-CONFIGURATION-SET: default-set']);
    assert.deepEqual(fields(plain, 'X-SES-MESSAGE-TAGS'), []);
    const metrics = await relay.metrics();
    assert.equal(metricValue(metrics, 'ses_relay_tenant_recipients_accepted_total', { tenant: 'shop' }), 1);
  });
});
