/**
 * The queue tool for operators: inspection (like Postfix's `mailq` and `postcat`) and actions (like
 * `postsuper`; queue-actions.ts):
 *
 *   ses-relay queue summary [--json]              (npm run queue -- ..., node dist/cli/queue.js ...)
 *   ses-relay queue list [queued|deferred|held|failed] [--limit N] [--json]
 *   ses-relay queue show QUEUE-ID [--json]
 *   ses-relay queue body QUEUE-ID          (the stored bytes, as accepted, on stdout)
 *   ses-relay queue retry|hold|release|delete|bounce QUEUE-ID...|--all [--state STATE] [--json]
 *
 * States are the relay's one vocabulary (src/types.ts): the same words as the spool, the log events and
 * the `state` label of `ses_relay_queue_messages`. The spool directory is SPOOL_DIR (via loadConfig).
 * Inspection never writes to the spool, so it is safe to run beside the relay; actions go through the
 * running relay (or take the spool lock when none runs). Exit codes: 0 ok, 1 usage error or no such
 * message, 2 spool unreadable or configuration error (actions: 3 a message was busy being delivered).
 */
import { once } from 'node:events';
import ms from 'ms';
import { ConfigError, loadConfig } from '../config';
import { ACTION_USAGE, isQueueAction, runQueueAction } from './queue-actions';
import {
  STORED_MESSAGE_STATES,
  UNAUTHENTICATED_TENANT,
  type StoredMessageState,
  type Tenant,
} from '../types';
import {
  SpoolInspector,
  SpoolUnreadableError,
  type MessageDetail,
  type QueueEntry,
  type SpoolSummary,
} from '../spool/spool-inspector';

export interface QueueCliIo {
  env: NodeJS.ProcessEnv;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  now?: number;
}

const STATE_LIST = STORED_MESSAGE_STATES.join('|');

const USAGE = `usage: queue <command> [--json]
  summary                           messages by state (${STORED_MESSAGE_STATES.join(', ')}), oldest, recipients by state
  list [${STATE_LIST}] [--limit N]  messages in that state (default: every message still to be delivered)
  show QUEUE-ID                     envelope, recipients with state and last reply, attempts
  body QUEUE-ID                     the stored message bytes on stdout
${ACTION_USAGE}
inspection reads the spool in SPOOL_DIR without writing; exit 0 ok, 1 usage or not found, 2 spool unreadable`;

class UsageError extends Error {}

const isState = (value: string): value is StoredMessageState =>
  (STORED_MESSAGE_STATES as readonly string[]).includes(value);

interface Parsed {
  command: string;
  positional: string[];
  json: boolean;
  limit?: number;
}

function parseArgs(args: string[]): Parsed {
  const positional: string[] = [];
  let json = false;
  let limit: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--json') json = true;
    else if (a === '--limit' || a.startsWith('--limit=')) {
      const value = a === '--limit' ? args[++i] : a.slice('--limit='.length);
      if (value === undefined || !/^[1-9][0-9]*$/.test(value)) {
        throw new UsageError('--limit needs a whole number > 0');
      }
      limit = Number(value);
    } else if (a === '-h' || a === '--help') positional.unshift('help');
    else if (a.startsWith('-')) throw new UsageError(`unknown option ${a}`);
    else positional.push(a);
  }
  const [command = '', ...rest] = positional;
  return { command, positional: rest, json, limit };
}

function time(ts: number | undefined): string {
  return ts === undefined ? '-' : new Date(ts).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function age(msValue: number): string {
  return ms(Math.max(0, Math.round(msValue)));
}

function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r
      .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c])))
      .join('  ')
      .trimEnd(),
  );
}

function oneLine(text: string | undefined, max = 80): string {
  if (text === undefined) return '-';
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat;
}

/** `454 Throttling failure` whether or not the stored reply text already starts with its code. */
function withCode(code: number | undefined, reply: string): string {
  return code === undefined || reply.startsWith(String(code)) ? reply : `${code} ${reply}`;
}

const STATE_NOTES: Record<StoredMessageState, string> = {
  queued: 'waiting for an attempt',
  deferred: 'waiting for a retry',
  held: 'held by an operator',
  failed: 'kept for inspection',
};

function formatSummary(s: SpoolSummary): string[] {
  const r = s.recipients;
  return [
    ...STORED_MESSAGE_STATES.map(
      (state) => `${`${state}:`.padEnd(11)}${s.messages[state]} messages (${STATE_NOTES[state]})`,
    ),
    `waiting:   ${s.waitingMessages} messages, ${s.waitingRecipients} recipients`,
    `oldest:    ${s.oldestWaitingAgeMs === undefined ? '-' : `${age(s.oldestWaitingAgeMs)} (${time(s.oldestWaitingReceivedAt)})`}`,
    `next due:  ${time(s.nextAttemptAt)}`,
    `recipients: ${Object.entries(r)
      .map(([state, n]) => `${state} ${n}`)
      .join(', ')}`,
    `bodies:    ${s.bodyBytes} bytes (${s.bodiesInFiles} in files)`,
  ];
}

function formatList(entries: QueueEntry[], state: StoredMessageState | undefined, now: number): string[] {
  if (entries.length === 0) return [state ? `no ${state} messages` : 'no messages waiting'];
  const header = [
    'QUEUE-ID',
    'STATE',
    'AGE',
    'RECEIVED',
    'FROM',
    'TENANT',
    'RCPT',
    'WAITING',
    'FAILED',
    'TRIES',
  ];
  header.push(state === 'failed' ? 'FINISHED' : 'NEXT-ATTEMPT', 'LAST-REPLY');
  const rows = entries.map((e) => [
    e.id,
    e.state,
    age(now - e.receivedAt),
    time(e.receivedAt),
    e.mailFrom === '' ? '<>' : e.mailFrom,
    e.tenant,
    String(e.recipients),
    String(e.waitingRecipients),
    String(e.failedRecipients),
    String(e.attempts),
    time(state === 'failed' ? e.finishedAt : e.nextAttemptAt),
    e.lastReply === undefined ? '-' : oneLine(withCode(e.lastCode, e.lastReply)),
  ]);
  return table([header, ...rows]);
}

/** The tenant of a message, as `queue show` prints it (mail without one: the trusted-networks tenant). */
function formatTenant(t: Tenant | undefined): string {
  if (!t) return `${UNAUTHENTICATED_TENANT} (priority normal)`;
  const parts = [`priority ${t.priority}`];
  if (t.rateLimit !== undefined) parts.push(`rate limit ${t.rateLimit}/s`);
  if (t.dailyQuota !== undefined) parts.push(`daily quota ${t.dailyQuota}`);
  if (t.configurationSet) parts.push(`configuration set ${t.configurationSet}`);
  const tags = Object.entries(t.tags ?? {});
  if (tags.length) parts.push(`tags ${tags.map(([k, v]) => `${k}=${v}`).join(', ')}`);
  return `${t.name} (${parts.join(', ')})`;
}

function formatShow(m: MessageDetail): string[] {
  const lines = [
    `queue id:    ${m.id}`,
    `state:       ${m.state}`,
    `from:        ${m.envelope.mailFrom === '' ? '<>' : m.envelope.mailFrom}`,
    `received:    ${time(m.receivedAt)} from ${m.reception.clientAddress}` +
      (m.reception.heloName ? ` (helo ${m.reception.heloName})` : '') +
      (m.reception.authUser ? ` as ${m.reception.authUser}` : ''),
    `size:        ${m.size} bytes (${m.body.storage === 'file' ? `file ${m.body.path}` : 'inline'})`,
    `attempts:    ${m.attempts}`,
  ];
  lines.push(`tenant:      ${formatTenant(m.reception.tenant)}`);
  if (m.reception.notification) {
    lines.push(`notification: ${m.reception.notification} for ${m.reception.notificationFor ?? '-'}`);
  }
  if (m.dsn) lines.push(`dsn:         ret ${m.dsn.ret ?? '-'}, envid ${m.dsn.envid ?? '-'}`);
  if (m.heldSince !== undefined) lines.push(`held since:  ${time(m.heldSince)}`);
  if (m.heldMs > 0) lines.push(`held before: ${age(m.heldMs)} (not counted by MAX_QUEUE_AGE)`);
  if (m.notificationsOwed.length) lines.push(`owed:        ${m.notificationsOwed.join(', ')} notification`);
  if (m.nextAttemptAt !== undefined) lines.push(`next:        ${time(m.nextAttemptAt)}`);
  if (m.finishedAt !== undefined) lines.push(`finished:    ${time(m.finishedAt)}`);
  lines.push('recipients:');
  const rows = m.recipients.map((r) => [
    `  ${r.recipient}`,
    r.status,
    r.code === undefined ? '-' : String(r.code),
    r.reply === undefined ? '-' : oneLine(r.reply, 200),
    r.notify || r.orcpt ? `(notify=${r.notify ?? '-'} orcpt=${r.orcpt ?? '-'})` : '',
  ]);
  return [...lines, ...table(rows)];
}

function write(stream: NodeJS.WritableStream, lines: string[]): void {
  stream.write(`${lines.join('\n')}\n`);
}

async function pipeBody(inspector: SpoolInspector, id: string, out: NodeJS.WritableStream): Promise<boolean> {
  const body = inspector.bodyStream(id);
  if (!body) return false;
  for await (const chunk of body) {
    if (!out.write(chunk as Buffer)) await once(out, 'drain');
  }
  return true;
}

/** The read-only commands' arguments, checked (UsageError otherwise). */
function checkInspectArgs(parsed: Parsed): void {
  if (!['summary', 'list', 'show', 'body'].includes(parsed.command)) {
    throw new UsageError(parsed.command ? `unknown command "${parsed.command}"` : 'a command is needed');
  }
  const max = parsed.command === 'summary' ? 0 : 1;
  if (parsed.positional.length > max) throw new UsageError(`too many arguments for ${parsed.command}`);
  if ((parsed.command === 'show' || parsed.command === 'body') && parsed.positional.length !== 1) {
    throw new UsageError(`${parsed.command} needs a QUEUE-ID`);
  }
  const filter = parsed.positional[0];
  if (parsed.command === 'list' && filter !== undefined && !isState(filter)) {
    throw new UsageError(
      `list takes ${STORED_MESSAGE_STATES.join(', ')} (or nothing: every message still to be delivered), not "${filter}"`,
    );
  }
}

/** The spool of SPOOL_DIR opened read-only, or the exit code after saying why it cannot be. */
function openInspector(io: QueueCliIo): SpoolInspector | number {
  try {
    return SpoolInspector.open(loadConfig(io.env).spool.dir);
  } catch (err) {
    if (err instanceof ConfigError) {
      write(io.stderr, [`queue: configuration error: ${err.message}`]);
      return 2;
    }
    if (err instanceof SpoolUnreadableError) {
      write(io.stderr, [`queue: ${err.message}`]);
      return 2;
    }
    throw err;
  }
}

/** One read-only command on an open spool; resolves with the exit code. */
async function inspect(inspector: SpoolInspector, parsed: Parsed, io: QueueCliIo): Promise<number> {
  const now = io.now ?? Date.now();
  const id = parsed.positional[0];
  switch (parsed.command) {
    case 'summary': {
      const summary = inspector.summary(now);
      write(io.stdout, parsed.json ? [JSON.stringify(summary)] : formatSummary(summary));
      return 0;
    }
    case 'list': {
      const state = id as StoredMessageState | undefined;
      const entries = inspector.list({ state, limit: parsed.limit ?? 100 });
      write(io.stdout, parsed.json ? [JSON.stringify(entries)] : formatList(entries, state, now));
      return 0;
    }
    case 'show': {
      const detail = inspector.show(id);
      if (!detail) {
        write(io.stderr, [`queue: no message ${id} in the spool`]);
        return 1;
      }
      write(io.stdout, parsed.json ? [JSON.stringify(detail)] : formatShow(detail));
      return 0;
    }
    default: {
      if (!(await pipeBody(inspector, id, io.stdout))) {
        write(io.stderr, [`queue: no message ${id} in the spool`]);
        return 1;
      }
      return 0;
    }
  }
}

/** Run one command; resolves with the exit code. */
export async function runQueueCli(args: string[], io: QueueCliIo): Promise<number> {
  const command = args.find((a) => !a.startsWith('-'));
  if (command !== undefined && isQueueAction(command)) {
    return runQueueAction(
      command,
      args.filter((a, i) => i !== args.indexOf(command)),
      io,
    );
  }
  let parsed: Parsed;
  try {
    parsed = parseArgs(args);
    if (parsed.command === 'help') {
      write(io.stdout, [USAGE]);
      return 0;
    }
    checkInspectArgs(parsed);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    write(io.stderr, [`queue: ${err.message}`, USAGE]);
    return 1;
  }

  const inspector = openInspector(io);
  if (typeof inspector === 'number') return inspector;
  try {
    return await inspect(inspector, parsed, io);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // A message finished (and its body file removed) between the lookup and the read.
    if (e.code === 'ENOENT') {
      write(io.stderr, [`queue: message ${parsed.positional[0]} left the spool while reading it`]);
      return 1;
    }
    write(io.stderr, [`queue: cannot read spool: ${e.message}`]);
    return 2;
  } finally {
    inspector.close();
  }
}

if (require.main === module) {
  runQueueCli(process.argv.slice(2), {
    env: process.env,
    stdout: process.stdout,
    stderr: process.stderr,
  }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`queue: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exitCode = 2;
    },
  );
}
