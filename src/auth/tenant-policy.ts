/**
 * A tenant's policy: what an API-key item (DynamoDB) or an SMTP_USER_POLICY_FILE entry may say about the
 * mail of one key or user, validated by ONE zod schema for both sources:
 *
 *   rate_limit         number > 0, at most 1 000 000   recipients/s this tenant may use at most (egress)
 *   daily_quota        whole number 0 .. 1 000 000 000 recipients accepted per UTC day (ingress: 451 4.7.1)
 *   configuration_set  1-64 of [A-Za-z0-9_-]           SES configuration set for its messages
 *   tags               name -> value, each 1-256 of [A-Za-z0-9_-], at most 50 tags   SES message tags
 *   priority           high | normal | bulk (default normal)   weight in the fair share (src/types.ts)
 *
 * SES's own rules: a configuration set name "Contain only letters (a-z, A-Z), numbers (0-9), underscores
 * (_), or dashes (-)" and "64 characters or fewer" (SES API Reference, ConfigurationSet); a message tag name
 * and value "can only contain ASCII letters (a–z, A–Z), numbers (0–9), underscores (_), or dashes (-)" and
 * "no more than 256 characters" (SES API v2 Reference, MessageTag). A value SES would refuse is refused
 * here, before any mail is accepted with it. The 50-tag and numeric bounds are the relay's own (typos such
 * as a rate of 1e308 are refused, not taken as "no limit"). `daily_quota: 0` is allowed: the key still
 * authenticates and every MAIL FROM gets 451 4.7.1.
 *
 * Malformed is never "no policy": a key whose item carries a malformed attribute is refused at AUTH
 * (454 4.7.0, see api-keys.ts) and a bad policy file stops the relay at start (ConfigError), so a typo can
 * neither crash the relay nor silently widen what a key may do (e.g. drop its quota).
 */
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { z } from 'zod';
import { TENANT_PRIORITIES, type Tenant, type TenantPriority } from '../types';

/** A tenant's policy without its name (the key's `name` or the SMTP user name). */
export type TenantPolicy = Omit<Tenant, 'name'>;

export const MAX_TENANT_TAGS = 50;
export const MAX_RATE_LIMIT = 1_000_000;
export const MAX_DAILY_QUOTA = 1_000_000_000;
const SES_NAME = /^[A-Za-z0-9_-]+$/;
const SES_NAME_RULE = 'only letters, digits, _ and - (SES)';

const tagPart = z.string().max(256, 'longer than 256 characters').regex(SES_NAME, SES_NAME_RULE);

/** One policy as written (snake_case, as in DynamoDB and the policy file); unknown fields are refused. */
export const tenantPolicySchema = z
  .object({
    rate_limit: z
      .number('must be a number')
      .refine(Number.isFinite, 'must be a finite number')
      .refine((v) => v > 0, 'must be > 0')
      .refine((v) => v <= MAX_RATE_LIMIT, `must be at most ${MAX_RATE_LIMIT}`)
      .optional(),
    daily_quota: z
      .number('must be a number')
      .int('must be a whole number')
      .min(0, 'must be >= 0')
      .max(MAX_DAILY_QUOTA, `must be at most ${MAX_DAILY_QUOTA}`)
      .optional(),
    configuration_set: z
      .string('must be a string')
      .min(1, 'is empty')
      .max(64, 'longer than 64 characters')
      .regex(SES_NAME, SES_NAME_RULE)
      .optional(),
    tags: z
      .record(tagPart.min(1, 'empty tag name'), tagPart.min(1, 'empty tag value'), 'must be an object')
      .refine((t) => Object.keys(t).length <= MAX_TENANT_TAGS, `more than ${MAX_TENANT_TAGS} tags`)
      .optional(),
    priority: z.enum(TENANT_PRIORITIES, `must be one of ${TENANT_PRIORITIES.join(', ')}`).optional(),
  })
  .strict();

export type TenantPolicyInput = z.input<typeof tenantPolicySchema>;

/** A policy that failed validation: which field and why (one line, never the whole input). */
export class TenantPolicyError extends Error {
  constructor(
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${field}: ${problem}`);
    this.name = 'TenantPolicyError';
  }
}

function firstIssue(error: z.ZodError): TenantPolicyError {
  const issue = error.issues[0];
  const path = issue?.path.map(String) ?? [];
  // An unknown field: zod reports it on the object with its keys.
  if (issue?.code === 'unrecognized_keys')
    return new TenantPolicyError(issue.keys[0] ?? '?', 'unknown field');
  const field = path.length ? path.join('.') : '(policy)';
  return new TenantPolicyError(field, issue?.message ?? 'invalid');
}

/** Validate a policy as written; throws TenantPolicyError naming the first bad field. */
export function parseTenantPolicy(input: unknown): TenantPolicy {
  const r = tenantPolicySchema.safeParse(input);
  if (!r.success) throw firstIssue(r.error);
  const p = r.data;
  return {
    priority: (p.priority ?? 'normal') as TenantPriority,
    ...(p.rate_limit !== undefined ? { rateLimit: p.rate_limit } : {}),
    ...(p.daily_quota !== undefined ? { dailyQuota: p.daily_quota } : {}),
    ...(p.configuration_set !== undefined ? { configurationSet: p.configuration_set } : {}),
    ...(p.tags !== undefined && Object.keys(p.tags).length ? { tags: { ...p.tags } } : {}),
  };
}

/** The tenant of a key or user: its name and policy (priority normal when none is set). */
export function tenantOf(name: string, policy?: TenantPolicy): Tenant {
  return { name, ...(policy ?? { priority: 'normal' }) };
}

/** `k=v,k2=v2` (the string form of `tags`): pairs split on `,` and the first `=`; blanks around them trimmed. */
export function parseTagString(value: string): Record<string, string> {
  const tags: Record<string, string> = {};
  for (const part of value.split(',')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq < 0) throw new TenantPolicyError('tags', `"${part.trim().slice(0, 40)}" is not name=value`);
    const name = part.slice(0, eq).trim();
    if (Object.hasOwn(tags, name))
      throw new TenantPolicyError('tags', `tag ${name.slice(0, 40)} given twice`);
    tags[name] = part.slice(eq + 1).trim();
  }
  return tags;
}

/** The policy attributes of an API-key item, in DynamoDB's types. */
export const POLICY_ATTRIBUTES = [
  'rate_limit',
  'daily_quota',
  'configuration_set',
  'tags',
  'priority',
] as const;

/** One DynamoDB attribute as the schema's input: numbers must be N, strings S, tags M of S or S `k=v,...`. */
function attributeInput(name: (typeof POLICY_ATTRIBUTES)[number], v: AttributeValue): unknown {
  switch (name) {
    case 'rate_limit':
    case 'daily_quota':
      if (v.N === undefined) throw new TenantPolicyError(name, 'must be a number (N)');
      return Number(v.N);
    case 'configuration_set':
    case 'priority':
      if (v.S === undefined) throw new TenantPolicyError(name, 'must be a string (S)');
      return v.S;
    case 'tags': {
      if (v.S !== undefined) return parseTagString(v.S);
      if (!v.M) throw new TenantPolicyError(name, 'must be a map of strings (M) or "name=value,..." (S)');
      const tags: Record<string, unknown> = {};
      for (const [k, tv] of Object.entries(v.M)) {
        if (tv.S === undefined) throw new TenantPolicyError(`tags.${k.slice(0, 40)}`, 'must be a string (S)');
        tags[k] = tv.S;
      }
      return tags;
    }
  }
}

/**
 * The policy of an API-key item (absent attributes: no limit, priority normal); throws TenantPolicyError
 * naming the attribute when one is malformed. A NULL attribute counts as absent.
 */
export function policyOfItem(item: Record<string, AttributeValue>): TenantPolicy {
  const input: Record<string, unknown> = {};
  for (const name of POLICY_ATTRIBUTES) {
    const v = item[name];
    if (v === undefined || v.NULL) continue;
    input[name] = attributeInput(name, v);
  }
  return parseTenantPolicy(input);
}

/** A policy as DynamoDB attributes (what `npm run blocklist -- apikey` writes). */
export function policyAttributes(p: TenantPolicy): Record<string, AttributeValue> {
  const out: Record<string, AttributeValue> = { priority: { S: p.priority } };
  if (p.rateLimit !== undefined) out.rate_limit = { N: String(p.rateLimit) };
  if (p.dailyQuota !== undefined) out.daily_quota = { N: String(p.dailyQuota) };
  if (p.configurationSet !== undefined) out.configuration_set = { S: p.configurationSet };
  if (p.tags) out.tags = { M: Object.fromEntries(Object.entries(p.tags).map(([k, v]) => [k, { S: v }])) };
  return out;
}

/** SMTP_USER_POLICY_FILE's problem: which user and field, without echoing the file. */
export class UserPolicyFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserPolicyFileError';
  }
}

/**
 * SMTP_USER_POLICY_FILE's content: `{ "<user>": { <policy> }, ... }`. Every user must be one of
 * SMTP_USERS (a policy for nobody is a typo that would leave the real user unlimited).
 */
export function parseUserPolicyFile(text: string, users: readonly string[]): Map<string, TenantPolicy> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new UserPolicyFileError(`is not JSON (${(err as Error).message.slice(0, 120)})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new UserPolicyFileError('must be a JSON object: { "<user>": { "daily_quota": 1000, ... } }');
  }
  const known = new Set(users);
  const out = new Map<string, TenantPolicy>();
  for (const [user, entry] of Object.entries(json)) {
    const shown = JSON.stringify(user.slice(0, 64));
    if (!known.has(user)) throw new UserPolicyFileError(`user ${shown} is not in SMTP_USERS`);
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
      throw new UserPolicyFileError(`user ${shown}: must be an object`);
    }
    try {
      out.set(user, parseTenantPolicy(entry));
    } catch (err) {
      if (err instanceof TenantPolicyError) throw new UserPolicyFileError(`user ${shown}: ${err.message}`);
      throw err;
    }
  }
  return out;
}
