/**
 * The tenant-policy flags of `npm run blocklist -- apikey add|update` (src/cli/blocklist.ts):
 *
 *   --rate-limit N  --daily-quota N  --configuration-set NAME  --tag NAME=VALUE (repeatable)  --priority P
 *
 * Values are checked with the schema the relay reads items with (src/auth/tenant-policy.ts), so the tool
 * never writes an item the relay would refuse. With `update`, the value `none` removes the attribute
 * (`--tag none` removes every tag; other --tag values replace the key's tags as a whole).
 */
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import {
  parseTagString,
  parseTenantPolicy,
  policyAttributes,
  TenantPolicyError,
} from '../auth/tenant-policy';

/** Flag -> attribute. */
const FLAGS = {
  'rate-limit': 'rate_limit',
  'daily-quota': 'daily_quota',
  'configuration-set': 'configuration_set',
  tag: 'tags',
  priority: 'priority',
} as const;
type Flag = keyof typeof FLAGS;

export const POLICY_USAGE = `policy flags (apikey add|update): --rate-limit N  --daily-quota N  --configuration-set NAME
                 --tag NAME=VALUE (repeatable)  --priority high|normal|bulk   (update: VALUE none removes it)`;

export class PolicyFlagError extends Error {}

/** What to write: attributes to set and attributes to remove. */
export interface PolicyChange {
  set: Record<string, AttributeValue>;
  remove: string[];
}

function flagOf(field: string): string {
  const attribute = field.split('.')[0];
  const flag = (Object.keys(FLAGS) as Flag[]).find((f) => FLAGS[f] === attribute);
  return flag ? `--${flag}` : field;
}

function numberFlag(flag: string, v: string): number {
  const n = v.trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(n)) throw new PolicyFlagError(`--${flag}: "${v.slice(0, 40)}" is not a number`);
  return n;
}

/** The policy flags given (the last of each, all of --tag), checked; `allowRemove` for update. */
export function policyChange(options: Map<string, string[]>, allowRemove: boolean): PolicyChange {
  const input: Record<string, unknown> = {};
  const remove: string[] = [];
  for (const flag of Object.keys(FLAGS) as Flag[]) {
    const values = options.get(flag);
    if (!values?.length) continue;
    const attribute = FLAGS[flag];
    const last = values[values.length - 1];
    if (last === 'none') {
      if (!allowRemove) throw new PolicyFlagError(`--${flag} none: only with apikey update`);
      remove.push(attribute);
      continue;
    }
    try {
      if (flag === 'tag') input.tags = parseTagString(values.join(','));
      else if (flag === 'rate-limit' || flag === 'daily-quota') input[attribute] = numberFlag(flag, last);
      else input[attribute] = last;
    } catch (err) {
      if (err instanceof TenantPolicyError) throw new PolicyFlagError(`--${flag}: ${err.problem}`);
      throw err;
    }
  }
  let policy;
  try {
    policy = parseTenantPolicy(input);
  } catch (err) {
    if (err instanceof TenantPolicyError) throw new PolicyFlagError(`${flagOf(err.field)}: ${err.problem}`);
    throw err;
  }
  const set = policyAttributes(policy);
  // Only what was given: the default priority is not written unless asked for.
  for (const name of Object.keys(set)) if (!(name in input)) delete set[name];
  return { set, remove };
}

/** `priority=high daily_quota=1000 ...` of an item, for `apikey list`. */
export function policySummary(item: Record<string, AttributeValue>): string {
  const parts: string[] = [];
  for (const name of ['priority', 'rate_limit', 'daily_quota', 'configuration_set'] as const) {
    const v = item[name];
    if (v?.S !== undefined || v?.N !== undefined) parts.push(`${name}=${v.S ?? v.N}`);
  }
  const tags = item.tags;
  if (tags?.M)
    parts.push(
      `tags=${Object.entries(tags.M)
        .map(([k, v]) => `${k}=${v.S ?? '?'}`)
        .join(',')}`,
    );
  else if (tags?.S !== undefined) parts.push(`tags=${tags.S}`);
  return parts.join(' ');
}
