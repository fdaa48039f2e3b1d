/**
 * API-key AUTH (USE_APIKEY): the SMTP AUTH password is an API key. The table (DYNAMODB_API_KEYS_TABLE) holds
 * only the SHA-256 of each key, never the key:
 *
 *   api_key_hash          S   partition key: lowercase hex SHA-256 of the key's UTF-8 bytes
 *   name                  S   label for logs (optional; the authenticated user is reported as this name)
 *   enabled               BOOL  false refuses the key (optional, default true)
 *   allowed_from_domains  SS | L of S | S (comma-separated)  MAIL FROM domains this key may use (optional)
 *   created_at            S   ISO time (informational)
 *   rate_limit            N   recipients/s this key may use at most (optional)
 *   daily_quota           N   recipients accepted per UTC day (optional; over it 451 4.7.1)
 *   configuration_set     S   SES configuration set of its messages (optional)
 *   tags                  M of S | S ("k=v,k2=v2")  SES message tags of its messages (optional)
 *   priority              S   high | normal | bulk (optional, default normal)
 *
 * The policy attributes are validated by src/auth/tenant-policy.ts (SES's name rules, bounds). A key whose
 * item has a MALFORMED policy attribute is refused at AUTH with 454 4.7.0 (temporary: the operator can fix
 * the item and the client's retry succeeds) and a warning `apikey:invalid-policy` naming the key's name (or
 * hash prefix) and the attribute; it is never accepted with the attribute ignored, which would silently
 * widen what the key may do (no quota, another configuration set). The answer is cached like any other.
 * The key's tenant is its `name` (or `apikey-<first 8 hex of the hash>`) with that policy: keys sharing a
 * name are one tenant and share its daily quota.
 *
 * The AUTH username is only a label, as in the original service (which checked the key alone): any
 * username is accepted with a valid key and is logged; the user name given to the rest of the relay is the
 * item's `name` (or `apikey-<first 8 hex of the hash>`). Answers, good and bad, are cached for
 * apiKeyCacheTtlMs; DynamoDB errors reject with AuthUnavailableError (the client gets 454 4.7.0).
 */
import { createHash, randomBytes } from 'node:crypto';
import { GetItemCommand, type AttributeValue, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { LRUCache } from 'lru-cache';
import {
  AuthUnavailableError,
  userNameHash,
  type AuthenticatedUser,
  type Authenticator,
} from './authenticator';
import type { Logger } from '../observability/logger';
import { apiKeyCacheHits, apiKeyLookups } from './auth-metrics';
import { policyOfItem, tenantOf, TenantPolicyError, type TenantPolicy } from './tenant-policy';

export const API_KEY_HASH_ATTRIBUTE = 'api_key_hash';

/** The table key for an API key: lowercase hex SHA-256 of its UTF-8 bytes. */
export function hashApiKey(apiKey: string): string {
  return createHash('sha256').update(apiKey, 'utf8').digest('hex');
}

/** A fresh API key: 32 random bytes, base64url (43 characters, safe in SMTP AUTH PLAIN and LOGIN). */
export function generateApiKey(): string {
  return randomBytes(32).toString('base64url');
}

/** Domains as stored: lowercase, without a leading `@`, empty entries dropped. */
export function normalizeDomains(domains: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const d of domains) {
    const v = d.trim().replace(/^@/, '').toLowerCase();
    if (v) out.add(v);
  }
  return [...out];
}

export interface ApiKeyItem {
  hash: string;
  name?: string;
  enabled: boolean;
  allowedFromDomains?: string[];
  /** The validated policy attributes; undefined when one is malformed (then `policyError` says which). */
  policy?: TenantPolicy;
  policyError?: TenantPolicyError;
}

function itemPolicy(item: Record<string, AttributeValue>): Pick<ApiKeyItem, 'policy' | 'policyError'> {
  try {
    return { policy: policyOfItem(item) };
  } catch (err) {
    if (err instanceof TenantPolicyError) return { policyError: err };
    throw err;
  }
}

/** Read an item in any of the accepted layouts (string set, list of strings, comma-separated string). */
export function parseApiKeyItem(item: Record<string, AttributeValue>): ApiKeyItem {
  const domainsAttr = item.allowed_from_domains;
  let domains: string[] | undefined;
  if (domainsAttr?.SS) domains = domainsAttr.SS;
  else if (domainsAttr?.L) domains = domainsAttr.L.map((v) => v.S ?? '').filter(Boolean);
  else if (domainsAttr?.S !== undefined) domains = domainsAttr.S.split(',');
  const allowed = domains ? normalizeDomains(domains) : undefined;
  return {
    hash: item[API_KEY_HASH_ATTRIBUTE]?.S ?? '',
    ...(item.name?.S ? { name: item.name.S } : {}),
    enabled: item.enabled?.BOOL ?? true,
    ...(allowed && allowed.length > 0 ? { allowedFromDomains: allowed } : {}),
    ...itemPolicy(item),
  };
}

export interface ApiKeyAuthenticatorOptions {
  client: DynamoDBClient;
  table: string;
  /** How long an answer (accepted or refused) is reused; 0 disables the cache. */
  cacheTtlMs: number;
  /** Most keys cached (default 10 000). */
  cacheMax?: number;
  logger: Logger;
}

/** Cached answer for a key hash: the user, null for unknown/disabled, or the item's malformed attribute. */
type Answer = { user: AuthenticatedUser | null; invalid?: string };

export class ApiKeyAuthenticator implements Authenticator {
  private readonly client: DynamoDBClient;
  private readonly table: string;
  private readonly logger: Logger;
  private readonly cache?: LRUCache<string, Answer>;

  constructor(options: ApiKeyAuthenticatorOptions) {
    this.client = options.client;
    this.table = options.table;
    this.logger = options.logger;
    if (options.cacheTtlMs > 0) {
      this.cache = new LRUCache<string, Answer>({ max: options.cacheMax ?? 10_000, ttl: options.cacheTtlMs });
    }
  }

  async authenticate(username: string, password: string): Promise<AuthenticatedUser | null> {
    if (!password) return null;
    const hash = hashApiKey(password);
    const cached = this.cache?.get(hash);
    if (cached) {
      apiKeyCacheHits.inc();
      if (cached.invalid) throw new AuthUnavailableError(cached.invalid);
      return cached.user && { ...cached.user };
    }

    let item: Record<string, AttributeValue> | undefined;
    try {
      const out = await this.client.send(
        new GetItemCommand({ TableName: this.table, Key: { [API_KEY_HASH_ATTRIBUTE]: { S: hash } } }),
      );
      item = out.Item;
    } catch (err) {
      apiKeyLookups.inc({ result: 'error' });
      const detail = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      this.logger.warn({ table: this.table, err: detail }, 'API key table unavailable');
      throw new AuthUnavailableError(`API key table unavailable: ${detail}`, err);
    }

    const parsed = item ? parseApiKeyItem(item) : undefined;
    let user: AuthenticatedUser | null = null;
    if (parsed?.enabled) {
      const name = parsed.name ?? `apikey-${hash.slice(0, 8)}`;
      if (parsed.policyError) return this.refuseInvalid(hash, name, parsed.policyError);
      user = {
        user: name,
        ...(parsed.allowedFromDomains ? { allowedFromDomains: parsed.allowedFromDomains } : {}),
        tenant: tenantOf(name, parsed.policy),
      };
    }
    apiKeyLookups.inc({ result: user ? 'accepted' : 'refused' });
    // The user name is logged as a hash (it may be a key typed into the wrong field); the key's hash prefix
    // only for a key that is in the table (disabled): for an unknown one it would be a hash of whatever was
    // typed as the password, static passwords included.
    const userHash = userNameHash(username);
    if (!user) {
      this.logger.info(
        parsed
          ? { userHash, keyHashPrefix: hash.slice(0, 8), reason: 'disabled' }
          : { userHash, reason: 'unknown' },
        'API key refused',
      );
    } else if (username && parsed?.name && username !== parsed.name) {
      this.logger.debug({ userHash, key: parsed.name }, 'API key used with another username (label only)');
    }
    this.cache?.set(hash, { user });
    return user && { ...user };
  }

  /** A key whose item has a malformed policy attribute: 454 4.7.0 (AuthUnavailableError), never accepted. */
  private refuseInvalid(hash: string, key: string, err: TenantPolicyError): never {
    apiKeyLookups.inc({ result: 'invalid' });
    const message = `API key ${key}: malformed attribute ${err.message}`;
    this.logger.warn(
      {
        event: 'apikey:invalid-policy',
        key,
        keyHashPrefix: hash.slice(0, 8),
        attribute: err.field.split('.')[0],
        field: err.field,
        problem: err.problem,
      },
      'API key refused: malformed policy attribute in its table item (fix the item; the client gets 454 4.7.0)',
    );
    this.cache?.set(hash, { user: null, invalid: message });
    throw new AuthUnavailableError(message);
  }

  clearCache(): void {
    this.cache?.clear();
  }
}
