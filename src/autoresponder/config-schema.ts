/**
 * The autoresponder's configuration format, the original Psiphon autoresponder's, kept as it was:
 *
 *   [{"email_addr": "get@example.org",
 *     "body": "text" | [["plain" | "html", "text"], ...],
 *     "attachments": null | [["bucket", "key", "filename"], ...],
 *     "send_method": "SES" | "SMTP"}, ...]
 *
 * Several entries for one address are several replies, sent in file order; addresses match
 * case-insensitively. `email_addr`, `body` and `attachments` are required (as in the original, which
 * refused an entry without them); `send_method` may be left out and then means "SMTP", as in the original
 * (`conf.get('send_method', '').upper() == 'SES'`), which goes through SES when AUTORESPONDER_SMTP_URL is
 * unset. Validation is strict (zod): an unknown field, a wrong type, a bad address or file name stops the
 * whole configuration with ONE line naming the entry, e.g. `entry 2 (get@example.org): body[1][0]: must
 * be "plain" or "html"`.
 */
import { domainToASCII } from 'node:url';
import { z } from 'zod';

export interface ResponderPart {
  type: 'plain' | 'html';
  text: string;
}

export interface AttachmentRef {
  bucket: string;
  key: string;
  filename: string;
}

export interface ResponderEntry {
  /** 1-based position in the file (for messages). */
  index: number;
  /** `email_addr` as configured (used as `Reply-To`). */
  address: string;
  /** `email_addr` in lower case, domain in ASCII: what requests are matched against. */
  key: string;
  parts: ResponderPart[];
  attachments: AttachmentRef[];
  sendMethod: 'SES' | 'SMTP';
}

export interface ResponderConfig {
  entries: ResponderEntry[];
  /** Entries by `key`, in file order. */
  byAddress: Map<string, ResponderEntry[]>;
  /** Domains of the configured addresses (lower-case ASCII). */
  domains: string[];
}

export class ResponderConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ResponderConfigError';
  }

  /** Just the line (main.ts prints `start failed: ${String(err)}`). */
  override toString(): string {
    return this.message;
  }
}

const DOT_ATOM = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;
/** S3 bucket naming rules (general purpose buckets). */
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
// eslint-disable-next-line no-control-regex
const BAD_FILENAME = /[\x00-\x1f\x7f/\\]/;

/** An error message that says "is missing" for an absent required field. */
const required =
  (message: string) =>
  (issue: { input?: unknown }): string =>
    issue.input === undefined ? 'is missing' : message;

const part = z.tuple([z.enum(['plain', 'html'], { error: 'must be "plain" or "html"' }), z.string()], {
  error: 'must be ["plain" | "html", "text"]',
});
const attachment = z.tuple(
  [
    z.string().regex(BUCKET, 'is not an S3 bucket name'),
    z.string().min(1, 'must not be empty').max(1024, 'is longer than 1024 characters'),
    z
      .string()
      .min(1, 'must not be empty')
      .max(255, 'is longer than 255 characters')
      .refine(
        (f) => !BAD_FILENAME.test(f) && f !== '.' && f !== '..',
        'is not a file name (no /, \\ or control characters)',
      ),
  ],
  { error: 'must be ["bucket", "key", "filename"]' },
);
const entrySchema = z.strictObject(
  {
    email_addr: z.string({ error: required('must be a string') }),
    body: z.union([z.string(), z.array(part).min(1, 'must hold at least one part')], {
      error: required('must be a string or a list of ["plain" | "html", "text"] parts'),
    }),
    attachments: z.union([z.null(), z.array(attachment)], {
      error: required('must be null or a list of ["bucket", "key", "filename"]'),
    }),
    send_method: z.enum(['SES', 'SMTP'], { error: 'must be "SES" or "SMTP"' }).optional(),
  },
  { error: 'must be an object' },
);

type Issue = z.core.$ZodIssue;

function pathText(path: PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('');
}

/** The most specific issue: inside a union, the branch that got furthest. */
function innermost(issue: Issue): Issue {
  if (issue.code !== 'invalid_union' || !issue.errors.length) return issue;
  const branches = issue.errors.filter((b) => b.length > 0);
  const deepest = branches
    .map((b) => b[0])
    .sort((a, b) => b.path.length - a.path.length)
    .find((i) => i.path.length > 0);
  return deepest ? { ...innermost(deepest), path: [...issue.path, ...deepest.path] } : issue;
}

function describe(issue: Issue): string {
  const inner = innermost(issue);
  const where = pathText(inner.path);
  if (inner.code === 'unrecognized_keys')
    return `unknown field ${inner.keys.map((k) => `"${k}"`).join(', ')}`;
  const missing = inner.code === 'invalid_type' && /received undefined/.test(inner.message);
  const what = missing ? 'is missing' : inner.message;
  return where ? `${where}: ${what}` : what;
}

/** Lower-case key of an address, or undefined when it is not one we can be reached at. */
export function addressKey(address: string): string | undefined {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return undefined;
  const local = address.slice(0, at);
  if (local.length > 64 || !DOT_ATOM.test(local)) return undefined;
  const domain = domainToASCII(address.slice(at + 1).toLowerCase());
  if (!domain || !domain.includes('.')) return undefined;
  return `${local.toLowerCase()}@${domain}`;
}

function parseEntry(raw: unknown, index: number): ResponderEntry {
  const label = (): string => {
    const addr = (raw as { email_addr?: unknown } | null)?.email_addr;
    return `entry ${index}${typeof addr === 'string' && addr ? ` (${addr})` : ''}`;
  };
  const result = entrySchema.safeParse(raw);
  if (!result.success) throw new ResponderConfigError(`${label()}: ${describe(result.error.issues[0])}`);
  const e = result.data;
  const key = addressKey(e.email_addr.trim());
  if (!key) throw new ResponderConfigError(`${label()}: email_addr: is not an address (user@example.org)`);
  const parts =
    typeof e.body === 'string'
      ? [{ type: 'plain' as const, text: e.body }]
      : e.body.map(([type, text]) => ({ type, text }));
  return {
    index,
    address: e.email_addr.trim(),
    key,
    parts,
    attachments: (e.attachments ?? []).map(([bucket, k, filename]) => ({ bucket, key: k, filename })),
    sendMethod: e.send_method ?? 'SMTP',
  };
}

/** Parses and validates the configuration text; throws ResponderConfigError with one line. */
export function parseResponderConfig(text: string): ResponderConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ResponderConfigError(`not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(json)) throw new ResponderConfigError('must be a JSON list of entries');
  if (json.length === 0) throw new ResponderConfigError('lists no entry');
  const entries = json.map((raw, i) => parseEntry(raw, i + 1));
  const byAddress = new Map<string, ResponderEntry[]>();
  for (const entry of entries) byAddress.set(entry.key, [...(byAddress.get(entry.key) ?? []), entry]);
  const domains = [...new Set(entries.map((e) => e.key.slice(e.key.lastIndexOf('@') + 1)))];
  return { entries, byAddress, domains };
}
