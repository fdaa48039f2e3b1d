/**
 * Operator CLI for the suppression list and the API-key table (the same tables the relay reads); in the
 * image `ses-relay blocklist ...` (src/cli/ses-relay.ts), in a checkout `npm run blocklist -- ...`.
 *
 *   npm run blocklist -- add ADDRESS|@DOMAIN [--reason TEXT]
 *   npm run blocklist -- remove ADDRESS|@DOMAIN
 *   npm run blocklist -- check ADDRESS          (same rules as the relay: address or its @domain)
 *   npm run blocklist -- list [PREFIX]
 *   npm run blocklist -- apikey add NAME [--from-domain DOMAIN]... [policy flags]   (prints the new key once)
 *   npm run blocklist -- apikey update KEY-ID [policy flags]    (VALUE none removes an attribute)
 *   npm run blocklist -- apikey list
 *   npm run blocklist -- apikey disable|enable|remove HASH|HASH-PREFIX|NAME
 *
 * Policy flags (src/cli/apikey-policy.ts, checked as the relay reads them): --rate-limit N, --daily-quota N,
 * --configuration-set NAME, --tag NAME=VALUE (repeatable), --priority high|normal|bulk.
 *
 * Tables: DYNAMODB_TABLE and DYNAMODB_API_KEYS_TABLE. Region, credentials and AWS_ENDPOINT_URL_DYNAMODB come
 * from the AWS SDK's standard chain. Exit codes: 0 done, 1 usage or not found, 2 DynamoDB error.
 */
import {
  DeleteItemCommand,
  DynamoDBClient,
  PutItemCommand,
  ScanCommand,
  UpdateItemCommand,
  type AttributeValue,
} from '@aws-sdk/client-dynamodb';
import { ConfigError, loadConfig } from '../config';
import { silentLogger } from '../observability/logger';
import { asciiDomain, domainOf, normalizeAddress } from '../policy/address';
import {
  API_KEY_HASH_ATTRIBUTE,
  generateApiKey,
  hashApiKey,
  normalizeDomains,
  parseApiKeyItem,
} from '../auth/api-keys';
import { SuppressionList } from '../policy/suppression-list';
import { POLICY_USAGE, PolicyFlagError, policyChange, policySummary } from './apikey-policy';

export interface CliIo {
  env: NodeJS.ProcessEnv;
  out: (line: string) => void;
  err: (line: string) => void;
  /** Injected client (tests); otherwise one from the standard chain. */
  client?: DynamoDBClient;
}

const USAGE = `usage: npm run blocklist -- <command>
  add ADDRESS|@DOMAIN [--reason TEXT]   suppress an address or a whole domain
  remove ADDRESS|@DOMAIN                remove an entry
  check ADDRESS                         is it suppressed (by address or domain)?
  list [PREFIX]                         print entries (Scan)
  apikey add NAME [--from-domain D]... [policy flags]   create an API key (printed once; only its SHA-256 is stored)
  apikey update KEY-ID [policy flags]   change a key's policy (rate limit, daily quota, configuration set, tags, priority)
  apikey list                           print API keys (hash prefix, name, enabled, domains, policy)
  apikey disable|enable|remove KEY-ID   KEY-ID: full hash, hash prefix (8+ chars) or name
${POLICY_USAGE}
environment: DYNAMODB_TABLE, DYNAMODB_API_KEYS_TABLE, AWS_REGION, AWS credentials, AWS_ENDPOINT_URL_DYNAMODB`;

class UsageError extends Error {}

/** Split `--name value` options (repeatable) from positional arguments. */
function parseArgs(args: string[]): { positional: string[]; options: Map<string, string[]> } {
  const positional: string[] = [];
  const options = new Map<string, string[]>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq === -1 ? a.slice(2) : a.slice(2, eq);
      const value = eq === -1 ? args[++i] : a.slice(eq + 1);
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
      options.set(name, [...(options.get(name) ?? []), value]);
    } else {
      positional.push(a);
    }
  }
  return { positional, options };
}

/**
 * The table key of an address or `@domain`, exactly as the relay computes it (src/policy/address.ts:
 * quotes resolved, lower case, domain in A-labels, so `@Bücher.example` is stored as
 * `@xn--bcher-kva.example`, the only spelling the relay ever looks up).
 */
function entryKey(input: string | undefined): string {
  const key = normalizeAddress(input ?? '');
  if (!key || !key.includes('@') || key.endsWith('@')) {
    throw new UsageError(`"${input ?? ''}" is not an address or @domain`);
  }
  if (!asciiDomain(domainOf(key))) {
    throw new UsageError(`"${input ?? ''}": the domain is not a valid (IDNA) domain name`);
  }
  return key;
}

/** The table from the environment, read (like every variable) by src/config.ts. */
function requireTable(env: NodeJS.ProcessEnv, name: 'DYNAMODB_TABLE' | 'DYNAMODB_API_KEYS_TABLE'): string {
  let policy;
  try {
    policy = loadConfig(env).policy;
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(`configuration error: ${err.message}`);
    throw err;
  }
  const t = name === 'DYNAMODB_TABLE' ? policy.table : policy.apiKeysTable;
  if (!t) throw new UsageError(`${name} is not set`);
  return t;
}

async function scanAll(client: DynamoDBClient, table: string): Promise<Record<string, AttributeValue>[]> {
  const items: Record<string, AttributeValue>[] = [];
  let start: Record<string, AttributeValue> | undefined;
  for (let page = 0; page < 100_000; page++) {
    const out = await client.send(new ScanCommand({ TableName: table, ExclusiveStartKey: start }));
    items.push(...(out.Items ?? []));
    start = out.LastEvaluatedKey;
    if (!start) break;
  }
  return items;
}

/** One command's context: its table, its arguments and flags, the DynamoDB client, the output. */
interface Command {
  table: string;
  positional: string[];
  options: Map<string, string[]>;
  client: DynamoDBClient;
  io: CliIo;
}

/** `add ADDRESS|DOMAIN [--reason R]`: put (or refresh) an entry under the relay's key. */
async function addSuppression({ table, positional, options, client, io }: Command): Promise<number> {
  const email = entryKey(positional[0]);
  const now = new Date().toISOString();
  await client.send(
    new UpdateItemCommand({
      TableName: table,
      Key: { email: { S: email } },
      UpdateExpression:
        'SET #reason = :reason, #source = :source, #firstSeen = if_not_exists(#firstSeen, :now), #lastSeen = :now',
      ExpressionAttributeNames: {
        '#reason': 'reason',
        '#source': 'source',
        '#firstSeen': 'firstSeen',
        '#lastSeen': 'lastSeen',
      },
      ExpressionAttributeValues: {
        ':reason': { S: options.get('reason')?.at(-1) ?? 'manual' },
        ':source': { S: 'cli' },
        ':now': { S: now },
      },
    }),
  );
  io.out(`suppressed ${email}`);
  return 0;
}

/** `remove ADDRESS|DOMAIN`: 1 when there was no such entry. */
async function removeSuppression({ table, positional, client, io }: Command): Promise<number> {
  const email = entryKey(positional[0]);
  const out = await client.send(
    new DeleteItemCommand({ TableName: table, Key: { email: { S: email } }, ReturnValues: 'ALL_OLD' }),
  );
  if (!out.Attributes) {
    io.err(`${email} is not on the suppression list`);
    return 1;
  }
  io.out(`removed ${email} (relays may keep their cached answer for up to BLOCKLIST_CACHE_TTL)`);
  return 0;
}

/** `check ADDRESS`: what the relay would decide (address or domain entry), uncached. */
async function checkSuppression({ table, positional, client, io }: Command): Promise<number> {
  const address = entryKey(positional[0]);
  const list = new SuppressionList({
    client,
    table,
    cacheTtlMs: 0,
    cacheMax: 1,
    logger: silentLogger,
    recoveryProbeMs: 0,
  });
  try {
    const d = await list.check([address]);
    const s = d.suppressed[0];
    io.out(
      s
        ? `${address}: suppressed (entry ${s.matched}${s.reason ? `, reason ${s.reason}` : ''})`
        : `${address}: not suppressed`,
    );
  } finally {
    await list.close();
  }
  return 0;
}

/** `list [PREFIX]`: every entry (a table scan), tab-separated. */
async function listSuppressions({ table, positional, client, io }: Command): Promise<number> {
  const prefix = positional[0] ? normalizeAddress(positional[0]) : '';
  const items = (await scanAll(client, table))
    .filter((i) => (i.email?.S ?? '').startsWith(prefix))
    .sort((a, b) => (a.email?.S ?? '').localeCompare(b.email?.S ?? ''));
  for (const i of items) {
    const detail = i.bounceType?.S ?? i.complaintFeedbackType?.S ?? '';
    io.out(
      [i.email?.S, i.reason?.S ?? '', detail, i.lastSeen?.S ?? '', i.count?.N ?? ''].join('\t').trimEnd(),
    );
  }
  io.err(`${items.length} entries`);
  return 0;
}

/** `apikey add NAME [--from-domain D] [policy flags]`: prints the new key once. */
async function addApiKey({ table, positional, options, client, io }: Command): Promise<number> {
  const arg = positional[1];
  if (!arg) throw new UsageError('apikey add needs a NAME');
  const policy = policyChange(options, false).set;
  const key = generateApiKey();
  const hash = hashApiKey(key);
  const domains = normalizeDomains((options.get('from-domain') ?? []).flatMap((d) => d.split(',')));
  await client.send(
    new PutItemCommand({
      TableName: table,
      Item: {
        [API_KEY_HASH_ATTRIBUTE]: { S: hash },
        name: { S: arg },
        enabled: { BOOL: true },
        created_at: { S: new Date().toISOString() },
        ...(domains.length > 0 ? { allowed_from_domains: { SS: domains } } : {}),
        ...policy,
      },
      ConditionExpression: 'attribute_not_exists(#h)',
      ExpressionAttributeNames: { '#h': API_KEY_HASH_ATTRIBUTE },
    }),
  );
  io.out(key);
  io.err(
    `API key "${arg}" created (hash ${hash})${domains.length ? `, From domains: ${domains.join(', ')}` : ''}.\n` +
      'The key above is shown only once: use it as the SMTP AUTH password (any username).',
  );
  return 0;
}

/** `apikey list`: hash prefix, name, state, From domains, policy. */
async function listApiKeys({ table, client, io }: Command): Promise<number> {
  const scanned = await scanAll(client, table);
  const raw = new Map(scanned.map((i) => [i[API_KEY_HASH_ATTRIBUTE]?.S ?? '', i]));
  const items = scanned.map(parseApiKeyItem);
  items.sort((a, b) => (a.name ?? '').localeCompare(b.name ?? ''));
  for (const k of items) {
    io.out(
      [
        k.hash.slice(0, 12),
        k.name ?? '',
        k.enabled ? 'enabled' : 'disabled',
        (k.allowedFromDomains ?? []).join(','),
        policySummary(raw.get(k.hash) ?? {}),
      ]
        .join('\t')
        .trimEnd(),
    );
  }
  io.err(`${items.length} keys`);
  return 0;
}

async function suppressionCommand(
  command: string,
  positional: string[],
  options: Map<string, string[]>,
  client: DynamoDBClient,
  io: CliIo,
): Promise<number> {
  const cmd = { table: requireTable(io.env, 'DYNAMODB_TABLE'), positional, options, client, io };
  switch (command) {
    case 'add':
      return addSuppression(cmd);
    case 'remove':
      return removeSuppression(cmd);
    case 'check':
      return checkSuppression(cmd);
    case 'list':
      return listSuppressions(cmd);
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

async function resolveApiKey(client: DynamoDBClient, table: string, id: string | undefined) {
  if (!id) throw new UsageError('give the key hash, a hash prefix (8+ characters) or the key name');
  const items = (await scanAll(client, table)).map(parseApiKeyItem);
  const lower = id.toLowerCase();
  const matches = items.filter(
    (k) => k.hash === lower || (lower.length >= 8 && k.hash.startsWith(lower)) || k.name === id,
  );
  if (matches.length !== 1) {
    throw new UsageError(
      matches.length === 0 ? `no API key matches "${id}"` : `"${id}" matches several keys`,
    );
  }
  return matches[0];
}

async function apiKeyCommand(
  positional: string[],
  options: Map<string, string[]>,
  client: DynamoDBClient,
  io: CliIo,
): Promise<number> {
  const table = requireTable(io.env, 'DYNAMODB_API_KEYS_TABLE');
  const cmd = { table, positional, options, client, io };
  const [sub, arg] = positional;
  switch (sub) {
    case 'add':
      return addApiKey(cmd);
    case 'list':
      return listApiKeys(cmd);
    case 'update':
      return updatePolicy(client, table, arg, options, io);
    case 'disable':
    case 'enable': {
      const k = await resolveApiKey(client, table, arg);
      await client.send(
        new UpdateItemCommand({
          TableName: table,
          Key: { [API_KEY_HASH_ATTRIBUTE]: { S: k.hash } },
          UpdateExpression: 'SET #enabled = :enabled',
          ExpressionAttributeNames: { '#enabled': 'enabled' },
          ExpressionAttributeValues: { ':enabled': { BOOL: sub === 'enable' } },
        }),
      );
      io.out(
        `${sub}d API key ${k.name ?? k.hash.slice(0, 12)} (relays may cache the old answer for APIKEY_CACHE_TTL)`,
      );
      return 0;
    }
    case 'remove': {
      const k = await resolveApiKey(client, table, arg);
      await client.send(
        new DeleteItemCommand({ TableName: table, Key: { [API_KEY_HASH_ATTRIBUTE]: { S: k.hash } } }),
      );
      io.out(`removed API key ${k.name ?? k.hash.slice(0, 12)}`);
      return 0;
    }
    default:
      throw new UsageError(`unknown apikey command "${sub ?? ''}"`);
  }
}

/** `apikey update KEY-ID [policy flags]`: SET the attributes given, REMOVE those given as `none`. */
async function updatePolicy(
  client: DynamoDBClient,
  table: string,
  id: string | undefined,
  options: Map<string, string[]>,
  io: CliIo,
): Promise<number> {
  const change = policyChange(options, true);
  const setNames = Object.keys(change.set);
  if (setNames.length + change.remove.length === 0) throw new UsageError('apikey update needs a policy flag');
  const k = await resolveApiKey(client, table, id);
  const names: Record<string, string> = {};
  const values: Record<string, AttributeValue> = {};
  const sets = setNames.map((n, i) => {
    names[`#s${i}`] = n;
    values[`:s${i}`] = change.set[n];
    return `#s${i} = :s${i}`;
  });
  const removes = change.remove.map((n, i) => {
    names[`#r${i}`] = n;
    return `#r${i}`;
  });
  const expression = [
    sets.length ? `SET ${sets.join(', ')}` : '',
    removes.length ? `REMOVE ${removes.join(', ')}` : '',
  ]
    .filter(Boolean)
    .join(' ');
  await client.send(
    new UpdateItemCommand({
      TableName: table,
      Key: { [API_KEY_HASH_ATTRIBUTE]: { S: k.hash } },
      UpdateExpression: expression,
      ExpressionAttributeNames: names,
      ...(Object.keys(values).length ? { ExpressionAttributeValues: values } : {}),
    }),
  );
  const what = [...setNames, ...change.remove.map((n) => `-${n}`)].join(', ');
  io.out(
    `updated API key ${k.name ?? k.hash.slice(0, 12)}: ${what} (relays may cache the old policy for APIKEY_CACHE_TTL)`,
  );
  return 0;
}

export async function runCli(args: string[], io: CliIo): Promise<number> {
  let client: DynamoDBClient | undefined;
  try {
    const { positional, options } = parseArgs(args);
    const [command, ...rest] = positional;
    if (!command || command === 'help' || options.has('help')) {
      io.out(USAGE);
      return command ? 0 : 1;
    }
    client = io.client ?? new DynamoDBClient({});
    if (command === 'apikey') return await apiKeyCommand(rest, options, client, io);
    return await suppressionCommand(command, rest, options, client, io);
  } catch (err) {
    if (err instanceof UsageError || err instanceof PolicyFlagError) {
      io.err(`error: ${err.message}`);
      io.err(USAGE);
      return 1;
    }
    io.err(`error: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`);
    return 2;
  } finally {
    if (client && !io.client) client.destroy();
  }
}

if (require.main === module) {
  runCli(process.argv.slice(2), {
    env: process.env,
    out: (l) => process.stdout.write(`${l}\n`),
    err: (l) => process.stderr.write(`${l}\n`),
  }).then((code) => {
    process.exitCode = code;
  });
}
