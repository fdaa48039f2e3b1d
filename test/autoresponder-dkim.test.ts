/**
 * AUTORESPONDER_REQUIRE_DKIM over real sockets, the relay in-process (startRelay) so that mailauth's DKIM
 * lookups can be answered by a resolver function (mailauth's own `resolver` option) holding the test keys:
 * a request signed by its From domain (or a subdomain: relaxed alignment) is answered; unsigned, signed by
 * another domain (a forged From aiming replies at a victim), or altered after signing is not; a DNS failure
 * is a 451 (retried), not a silent drop.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { dkimSign } from 'mailauth/lib/dkim/sign';
import { loadConfig } from '../src/config';
import { silentLogger } from '../src/observability/logger';
import { startRelay } from '../src/relay';
import { FAKE_SES_CA, startFakeSes } from './helpers/fake-ses';
import { cleanupAfterAll } from './helpers/cleanup';
import { freePort, metricValue, tempDir } from './helpers/relay-process';
import { autoresponderEnv, requestMessage, sendRequest } from './helpers/autoresponder';

const cleanups = cleanupAfterAll();

function keyPair() {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    pem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    txt: `v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`,
  };
}

const keys = { good: keyPair(), attacker: keyPair() };
const DNS: Record<string, string> = {
  's1._domainkey.example.net': keys.good.txt,
  's1._domainkey.mail.example.net': keys.good.txt,
  's1._domainkey.attacker.example': keys.attacker.txt,
};

async function resolver(name: string, type: string): Promise<string[][]> {
  if (name === 'slow._domainkey.example.net') throw Object.assign(new Error('timeout'), { code: 'ETIMEOUT' });
  if (type === 'TXT' && DNS[name]) return [[DNS[name]]];
  throw Object.assign(new Error(`${name} not found`), { code: 'ENOTFOUND' });
}

async function signed(raw: string, domain: string, key: string, selector = 's1'): Promise<string> {
  // mailauth 4.x takes its keys in `signatureData` (its bundled types describe the 5.x options).
  const options = { signatureData: [{ signingDomain: domain, selector, privateKey: key }] };
  const { signatures, errors } = await dkimSign(raw, options as unknown as Parameters<typeof dkimSign>[1]);
  assert.match(signatures, /^DKIM-Signature: /);
  assert.deepEqual(errors ?? [], []);
  return signatures + raw;
}

test('only requests with a verifying DKIM signature aligned with their From domain are answered', async () => {
  const ses = await startFakeSes();
  cleanups.push(() => ses.close());
  const port = await freePort();
  const config = [{ email_addr: 'get@example.org', body: 'hello', attachments: null, send_method: 'SES' }];
  const { env } = autoresponderEnv(config, port, {
    AUTORESPONDER_REQUIRE_DKIM: 'true',
    AUTORESPONDER_DAILY_LIMIT: '100',
    AWS_SMTP_HOST: '127.0.0.1',
    AWS_SMTP_PORT: String(ses.port),
    AWS_SMTP_USERNAME: ses.username,
    AWS_SMTP_PASSWORD: ses.password,
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(await freePort()),
    METRICS_HOST: '127.0.0.1',
    METRICS_PORT: String(await freePort()),
    SPOOL_DIR: tempDir(),
    SHUTDOWN_TIMEOUT: '5s',
  });
  const relay = await startRelay(loadConfig(env), {
    logger: silentLogger,
    upstreamCa: FAKE_SES_CA,
    autoresponderDnsResolver: resolver,
  });
  cleanups.push(() => relay.stop());
  assert.equal(relay.autoresponderAddress()?.port, port);

  const send = (raw: string, from = 'pat@example.net') =>
    sendRequest(port, raw, { from, to: ['get@example.org'] });
  const request = (from: string) => requestMessage({ from, body: 'Please send the software.' });

  assert.ok((await send(await signed(request('pat@example.net'), 'example.net', keys.good.pem))).ok);
  assert.ok((await send(await signed(request('sub@example.net'), 'mail.example.net', keys.good.pem))).ok);
  await ses.waitFor(2, 15_000);

  const refused = [
    request('pat@example.net'), // unsigned
    await signed(request('victim@example.net'), 'attacker.example', keys.attacker.pem), // forged From
    (await signed(request('pat@example.net'), 'example.net', keys.good.pem)).replace(
      'Please send',
      'Please SEND',
    ),
    await signed(request('pat@example.net'), 'example.net', keys.attacker.pem), // the wrong key
  ];
  for (const raw of refused) {
    const r = await send(raw);
    assert.ok(r.ok && r.code === 250, r.response);
  }
  const temp = await send(await signed(request('pat@example.net'), 'example.net', keys.good.pem, 'slow'));
  assert.equal(temp.code, 451);
  assert.match(temp.response, /^451 4\.3\.0 /);

  const metrics = await (await fetch(`http://127.0.0.1:${relay.metricsAddress().port}/metrics`)).text();
  assert.equal(metricValue(metrics, 'ses_relay_autoresponder_requests_total', { result: 'answered' }), 2);
  assert.equal(metricValue(metrics, 'ses_relay_autoresponder_requests_total', { result: 'dkim-failed' }), 4);
  assert.equal(
    metricValue(metrics, 'ses_relay_autoresponder_requests_total', { result: 'temporary-failure' }),
    1,
  );
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(
    ses.messages.map((m) => m.recipients[0]).sort(),
    ['pat@example.net', 'sub@example.net'],
    'no reply ever went to the forged victim',
  );
});
