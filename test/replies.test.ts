/** The reply catalogue and the README stay in step: every reply the relay gives is documented. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { REPLIES, smtpError, replyLine } from '../src/replies';
import { CONFIG_VARIABLES } from '../src/config/specs';

const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');

test('every catalogue reply is in the README with its code and enhanced code', () => {
  for (const [key, r] of Object.entries(REPLIES)) {
    assert.ok(
      readme.includes(`\`${r.code} ${r.enhanced} ${r.text}`),
      `README lacks reply ${key}: ${r.code} ${r.enhanced}`,
    );
  }
});

test('enhanced codes agree with reply codes (RFC 3463 class = first digit)', () => {
  for (const [key, r] of Object.entries(REPLIES)) {
    assert.equal(r.enhanced[0], String(r.code)[0], key);
    assert.match(r.enhanced, /^[245]\.\d{1,3}\.\d{1,3}$/, key);
  }
});

test('smtpError carries the response code smtp-server uses', () => {
  const e = smtpError('tooManyRecipients');
  assert.equal(e.responseCode, 452);
  assert.match(e.message, /^4\.5\.3 Too many recipients/);
  assert.equal(replyLine('spoolUnavailable'), '452 4.3.1 Insufficient system storage, try again later');
});

test('every configuration variable is in the README table', () => {
  for (const v of CONFIG_VARIABLES) assert.ok(readme.includes(`\`${v}\``), `README lacks ${v}`);
});
