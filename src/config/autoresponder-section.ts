/** The autoresponder section of the configuration (docs/autoresponder.md), with its cross-variable checks. */
import path from 'node:path';
import { domainToASCII } from 'node:url';
import { ConfigError } from './config-error';
import type { AutoresponderConfig, AutoresponderSource } from './config-types';
import type { CleanEnv } from './specs';
import { bareAddress, readPem } from './validators';

function autoresponderSource(value: string): AutoresponderSource {
  if (!value.startsWith('s3://')) return { kind: 'file', path: path.resolve(value) };
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(value);
  if (!m) throw new ConfigError('AUTORESPONDER_CONFIG', 'must be a file path or s3://bucket/key');
  return { kind: 's3', bucket: m[1], key: m[2] };
}

/** The autoresponder section, with its cross-variable checks (undefined when AUTORESPONDER_CONFIG is unset). */
export function autoresponderConfig(e: CleanEnv, spoolDir: string): AutoresponderConfig | undefined {
  if (!e.AUTORESPONDER_CONFIG) return undefined;
  const source = autoresponderSource(e.AUTORESPONDER_CONFIG);
  if (!e.AUTORESPONDER_FROM)
    throw new ConfigError('AUTORESPONDER_FROM', 'is required when AUTORESPONDER_CONFIG is set');
  const fromAddress = bareAddress(e.AUTORESPONDER_FROM);
  if (!fromAddress)
    throw new ConfigError(
      'AUTORESPONDER_FROM',
      'is not an address (name <user@example.org> or user@example.org)',
    );
  const returnPath = e.AUTORESPONDER_RETURN_PATH ? bareAddress(e.AUTORESPONDER_RETURN_PATH) : fromAddress;
  if (!returnPath) throw new ConfigError('AUTORESPONDER_RETURN_PATH', 'is not an address (user@example.org)');
  if (e.AUTORESPONDER_QUOTA_TABLE && !e.AUTORESPONDER_HASH_KEY) {
    throw new ConfigError(
      'AUTORESPONDER_HASH_KEY',
      'is required when AUTORESPONDER_QUOTA_TABLE is set (every replica must hash alike)',
    );
  }
  if (e.AUTORESPONDER_PORT === e.SMTP_PORT)
    throw new ConfigError('AUTORESPONDER_PORT', 'must differ from SMTP_PORT');
  if (e.AUTORESPONDER_PORT === e.METRICS_PORT)
    throw new ConfigError('AUTORESPONDER_PORT', 'must differ from METRICS_PORT');
  if (e.AUTORESPONDER_CONFIG_REFRESH <= 0)
    throw new ConfigError('AUTORESPONDER_CONFIG_REFRESH', 'must be > 0');
  if (e.AUTORESPONDER_QUOTA_WINDOW < 1000)
    throw new ConfigError('AUTORESPONDER_QUOTA_WINDOW', 'must be at least 1s');
  let dkim: AutoresponderConfig['dkim'];
  const dkimSet = [e.DKIM_DOMAIN, e.DKIM_SELECTOR, e.DKIM_PRIVATE_KEY_PATH].filter(Boolean).length;
  if (dkimSet > 0) {
    const missing = !e.DKIM_DOMAIN
      ? 'DKIM_DOMAIN'
      : !e.DKIM_SELECTOR
        ? 'DKIM_SELECTOR'
        : 'DKIM_PRIVATE_KEY_PATH';
    if (dkimSet < 3) throw new ConfigError(missing, 'is required when another DKIM_* variable is set');
    const domain = domainToASCII(e.DKIM_DOMAIN.toLowerCase());
    if (!domain || !domain.includes('.')) throw new ConfigError('DKIM_DOMAIN', 'is not a domain');
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(e.DKIM_SELECTOR))
      throw new ConfigError('DKIM_SELECTOR', 'is not a selector');
    const privateKey = readPem('DKIM_PRIVATE_KEY_PATH', e.DKIM_PRIVATE_KEY_PATH).toString('utf8');
    dkim = { domain, selector: e.DKIM_SELECTOR, privateKey };
  }
  return {
    source,
    refreshMs: e.AUTORESPONDER_CONFIG_REFRESH,
    host: e.AUTORESPONDER_HOST,
    port: e.AUTORESPONDER_PORT,
    from: e.AUTORESPONDER_FROM.trim(),
    fromAddress,
    returnPath,
    dailyLimit: e.AUTORESPONDER_DAILY_LIMIT,
    quotaWindowMs: e.AUTORESPONDER_QUOTA_WINDOW,
    exemptDomains: e.AUTORESPONDER_EXEMPT_DOMAINS,
    blockedDomains: e.AUTORESPONDER_BLOCKED_DOMAINS,
    quotaTable: e.AUTORESPONDER_QUOTA_TABLE || undefined,
    hashKey: e.AUTORESPONDER_HASH_KEY ? Buffer.from(e.AUTORESPONDER_HASH_KEY, 'utf8') : undefined,
    smtpUrl: e.AUTORESPONDER_SMTP_URL || undefined,
    requireDkim: e.AUTORESPONDER_REQUIRE_DKIM,
    dkim,
    dataDir: path.join(spoolDir, 'autoresponder'),
  };
}
