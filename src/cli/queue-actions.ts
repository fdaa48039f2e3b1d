/**
 * The queue tool's actions (`queue retry|hold|release|delete|bounce ID...|--all [--state STATE]`), like
 * Postfix's `postsuper -r/-h/-H/-d` and `postqueue -i`:
 *
 * - With the relay running, the action goes to it over `<SPOOL_DIR>/control.sock` (src/spool/queue-control.ts)
 *   and the relay applies it in one transaction; a message being delivered right now is changed once its
 *   attempt ends (waited for up to 30 s), or reported busy and left unchanged.
 * - With no relay running, the tool takes the spool lock itself (a relay starting meanwhile waits for it)
 *   and applies the same action the same way. Run it as the relay's user (in the image: `node`, the default
 *   of `docker exec`), or the files it creates would not be the relay's.
 *
 * Output: every changed queue id on stdout, one per line (or the whole result with --json); the others on
 * stderr with the reason. Exit codes: 0 done (messages the action does not apply to in their state are
 * reported and skipped), 1 usage error or an unknown queue id (the known ones are still changed), 2 spool
 * or relay unreachable, 3 a message was still being delivered and was not changed (run it again).
 */
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError, loadConfig } from '../config';
import {
  ACTION_STATE_FILTERS,
  QUEUE_ACTIONS,
  type ActionStateFilter,
  type QueueAction,
  type QueueActionKind,
  type QueueActionResult,
} from '../spool/spool-actions';
import { ControlUnavailableError, controlSocketPath, requestAction } from '../spool/queue-control';
import { QUEUE_TOOL_HOLDER, SpoolLockedError } from '../spool/spool-lock';
import { SqliteSpool } from '../spool/sqlite-spool';

export interface ActionIo {
  env: NodeJS.ProcessEnv;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** Longer than the relay's wait for deliveries in progress (ACTION_WAIT_MS). */
const ANSWER_TIMEOUT_MS = 60_000;

export const ACTION_USAGE = `  retry ID...|--all [--state S]     due now (attempts kept): queued, deferred
  hold ID...|--all [--state S]      put aside (never sent, never expires while held): queued, deferred
  release ID...|--all [--state S]   held again due now
  delete ID...|--all --state S      remove without a notification (any state)
  bounce ID...|--all --state S      fail every waiting recipient now (a notification when BOUNCE_FROM is set)
  (S: ${ACTION_STATE_FILTERS.join(', ')}; actions go to the running relay over SPOOL_DIR/control.sock,
   or are applied directly when none runs; exit 0 done, 1 unknown id, 2 unreachable, 3 busy)`;

export class ActionUsageError extends Error {}

export function isQueueAction(command: string): command is QueueActionKind {
  return (QUEUE_ACTIONS as readonly string[]).includes(command);
}

/** The action from the command line (after the command word). */
export function parseAction(kind: QueueActionKind, args: string[]): { action: QueueAction; json: boolean } {
  const ids: string[] = [];
  let all = false;
  let json = false;
  let state: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--all') all = true;
    else if (a === '--json') json = true;
    else if (a === '--state' || a.startsWith('--state=')) {
      state = a === '--state' ? args[++i] : a.slice('--state='.length);
      if (state === undefined) throw new ActionUsageError('--state needs a state');
    } else if (a.startsWith('-')) throw new ActionUsageError(`unknown option ${a}`);
    else ids.push(a);
  }
  if (state !== undefined && !(ACTION_STATE_FILTERS as readonly string[]).includes(state)) {
    const why = state === 'delivered' ? ' (delivered messages are no longer in the spool)' : '';
    throw new ActionUsageError(`--state takes ${ACTION_STATE_FILTERS.join(', ')}, not "${state}"${why}`);
  }
  if (all && ids.length) throw new ActionUsageError(`${kind}: name queue ids or --all, not both`);
  if (!all && !ids.length) throw new ActionUsageError(`${kind} needs queue ids or --all`);
  if (all && (kind === 'delete' || kind === 'bounce') && state === undefined) {
    throw new ActionUsageError(
      `${kind} --all needs --state (a guard against emptying the queue by accident)`,
    );
  }
  const action: QueueAction = { action: kind };
  if (all) action.all = true;
  else action.ids = ids;
  if (state !== undefined) action.state = state as ActionStateFilter;
  return { action, json };
}

class Unreachable extends Error {}

/** No relay answers: take the lock and act on the spool directly. */
async function actDirectly(
  env: NodeJS.ProcessEnv,
  action: QueueAction,
  why: string,
): Promise<QueueActionResult> {
  const config = loadConfig(env);
  const dir = config.spool.dir;
  if (!fs.existsSync(path.join(dir, 'spool.db'))) {
    throw new Unreachable(`no spool at ${dir} (spool.db not found; check SPOOL_DIR)`);
  }
  const n = config.notifications;
  let spool: SqliteSpool;
  try {
    spool = await SqliteSpool.open({
      dir,
      failedRetentionMs: config.spool.failedRetentionMs,
      lockHolder: QUEUE_TOOL_HOLDER,
      notifications: n && {
        bounceFrom: n.bounceFrom,
        delayWarningMs: n.delayWarningMs,
        maxQueueAgeMs: n.maxQueueAgeMs,
      },
    });
  } catch (err) {
    if (!(err instanceof SpoolLockedError)) throw err;
    throw new Unreachable(
      `the relay (${err.pid === undefined ? 'pid unknown' : `pid ${err.pid}`}) holds the spool but does not answer on ${controlSocketPath(dir)} (${why}); try again in a moment`,
    );
  }
  try {
    return await spool.act(action, 0);
  } finally {
    await spool.close();
  }
}

function report(result: QueueActionResult, json: boolean, io: ActionIo): number {
  const err = (line: string) => io.stderr.write(`queue: ${line}\n`);
  if (json) io.stdout.write(`${JSON.stringify(result)}\n`);
  else for (const id of result.changed) io.stdout.write(`${id}\n`);
  for (const id of result.unknown) err(`${id}: no such message in the spool`);
  for (const { id, state } of result.unchanged)
    err(`${id}: not changed (${result.action} does not apply to ${state} messages)`);
  for (const id of result.finished)
    err(`${id}: finished (delivered) while waiting; nothing to ${result.action}`);
  for (const id of result.busy) err(`${id}: still being delivered; not changed (run the command again)`);
  err(`${result.action}: ${result.changed.length} changed`);
  if (result.unknown.length) return 1;
  return result.busy.length ? 3 : 0;
}

/** Run one action; resolves with the exit code. */
export async function runQueueAction(kind: QueueActionKind, args: string[], io: ActionIo): Promise<number> {
  let parsed;
  try {
    parsed = parseAction(kind, args);
  } catch (err) {
    if (!(err instanceof ActionUsageError)) throw err;
    io.stderr.write(`queue: ${err.message}\n${ACTION_USAGE}\n`);
    return 1;
  }
  try {
    const dir = loadConfig(io.env).spool.dir;
    let result: QueueActionResult;
    try {
      result = await requestAction(dir, parsed.action, ANSWER_TIMEOUT_MS);
    } catch (err) {
      if (!(err instanceof ControlUnavailableError)) throw err;
      result = await actDirectly(io.env, parsed.action, err.code ?? err.message);
    }
    return report(result, parsed.json, io);
  } catch (err) {
    if (err instanceof ConfigError) io.stderr.write(`queue: configuration error: ${err.message}\n`);
    else io.stderr.write(`queue: ${kind} failed: ${err instanceof Error ? err.message : String(err)}\n`);
    return 2;
  }
}
