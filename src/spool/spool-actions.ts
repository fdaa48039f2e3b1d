/**
 * An operator's queue actions (`queue retry|hold|release|delete|bounce`, like Postfix's `postsuper -r/-h/-H/-d`
 * and KumoMTA's admin bounce), as the SQL half of `SqliteSpool.act`: every message an action names is changed
 * inside ONE group-commit operation, so one action is one transaction. Pure database work, re-runnable (the
 * group committer may replay it); the caller applies the returned bookkeeping on commit.
 *
 * What each action does, by the message's state (src/types.ts; any other state leaves it `unchanged`):
 * - `retry` (queued, deferred): due now; its attempts are kept (the retry schedule goes on from there).
 * - `hold` (queued, deferred): `held` — never leased, never expires while held.
 * - `release` (held): back to `deferred` (a recipient has a deferral) or `queued`, due now; the time held is
 *   added to `held_ms`, which MAX_QUEUE_AGE does not count.
 * - `delete` (any): removed with its body, no notification (Postfix's `postsuper -d`). A notification already
 *   owed is still sent (its row carries the headers; RET=FULL then returns headers only).
 * - `bounce` (queued, deferred, held): every waiting recipient `failed` now, the message `failed`, and when
 *   notifications are on one `operator-bounce` notification owed in the same transaction.
 */
import { STORED_MESSAGE_STATES, type MessageId, type StoredMessageState } from '../types';
import type Database from 'better-sqlite3';
import type { OpResult } from './group-commit';
import type { LeaseTable } from './spool-leases';
import type { NotificationLedger } from './spool-notifications';
import { deleteMessage } from './spool-outcomes';
import type { MessageRow, SpoolStatements } from './spool-schema';

export const QUEUE_ACTIONS = ['retry', 'hold', 'release', 'delete', 'bounce'] as const;
export type QueueActionKind = (typeof QUEUE_ACTIONS)[number];

/** `--state` filters: the stored states and `sending` (leased right now). */
export const ACTION_STATE_FILTERS = ['queued', 'sending', 'deferred', 'held', 'failed'] as const;
export type ActionStateFilter = (typeof ACTION_STATE_FILTERS)[number];

export interface QueueAction {
  action: QueueActionKind;
  /** Queue ids; or `all`. */
  ids?: MessageId[];
  /** Every message the action applies to (limited by `state`). */
  all?: boolean;
  /** Only messages in this state. */
  state?: ActionStateFilter;
}

export interface QueueActionResult {
  action: QueueActionKind;
  /** Messages changed, in the order named (or found). */
  changed: MessageId[];
  /** Named messages the action does not apply to in their state (e.g. `release` of a queued one). */
  unchanged: Array<{ id: MessageId; state: StoredMessageState | 'sending' }>;
  /** Named ids the spool has no message for (never had, or already delivered and removed). */
  unknown: MessageId[];
  /** Named messages still being delivered when the action gave up waiting: not changed, try again. */
  busy: MessageId[];
  /** Messages that finished (delivered and removed) while the action waited for their attempt. */
  finished: MessageId[];
}

/** The states an action changes. */
export const ACTION_APPLIES: Record<QueueActionKind, readonly StoredMessageState[]> = {
  retry: ['queued', 'deferred'],
  hold: ['queued', 'deferred'],
  release: ['held'],
  delete: STORED_MESSAGE_STATES,
  bounce: ['queued', 'deferred', 'held'],
};

/** The reply stored for recipients an operator bounced. */
export const OPERATOR_BOUNCE_REPLY = 'returned to the sender by the operator (queue bounce)';

/** What the committed operation changed, for the spool's counters and files. */
export interface ActionEffects {
  result: QueueActionResult;
  /** Messages by stored state: +1 / -1. */
  stateDelta: Record<StoredMessageState, number>;
  pendingRecipientsDelta: number;
  /** Deleted messages whose body is a file (removed after the commit). */
  removedFiles: MessageId[];
  /** Messages now due (retry, release): forget their in-memory hold-back. */
  due: MessageId[];
  /** A notification was owed. */
  notified: boolean;
}

export type ActionStatements = ReturnType<typeof prepareActionStatements>;

export function prepareActionStatements(db: Database.Database) {
  return {
    setDueNow: db.prepare(`UPDATE messages SET due_at = ? WHERE id = ?`),
    hold: db.prepare(`UPDATE messages SET state = 'held', held_at = ? WHERE id = ?`),
    release: db.prepare(
      `UPDATE messages SET state = ?, due_at = ?, held_at = NULL,
              held_ms = held_ms + max(0, ? - coalesce(held_at, ?)) WHERE id = ?`,
    ),
    hasDeferred: db.prepare(`SELECT count(*) FROM recipients WHERE message_id = ? AND status = 'deferred'`),
    failWaiting: db.prepare(
      `UPDATE recipients SET status = 'failed', reply = ?, code = NULL
        WHERE message_id = ? AND status IN ('queued', 'deferred')`,
    ),
    idsInState: db.prepare(`SELECT id FROM messages WHERE state = ? ORDER BY received_at, id`),
  };
}

/** The ids `--all` selects: messages the action applies to, in `state` when given. */
export function selectAll(a: ActionStatements, action: QueueAction, leased: MessageId[]): MessageId[] {
  if (action.state === 'sending') return leased;
  const states = ACTION_APPLIES[action.action].filter((s) => !action.state || s === action.state);
  return states.flatMap((s) => a.idsInState.pluck().all(s) as MessageId[]);
}

export function emptyResult(action: QueueActionKind): QueueActionResult {
  return { action, changed: [], unchanged: [], unknown: [], busy: [], finished: [] };
}

interface Context {
  stmt: SpoolStatements;
  a: ActionStatements;
  ledger: NotificationLedger;
  now: number;
}

/**
 * Apply `action` to `ids` (already known to exist when named; `leased` ones are reported busy) inside the
 * group-commit operation. `named` ids that have no row now finished while the action waited.
 */
export function applyAction(
  ctx: Context,
  action: QueueAction,
  ids: MessageId[],
  isLeased: (id: MessageId) => boolean,
): ActionEffects {
  const fx: ActionEffects = {
    result: emptyResult(action.action),
    stateDelta: { queued: 0, deferred: 0, held: 0, failed: 0 },
    pendingRecipientsDelta: 0,
    removedFiles: [],
    due: [],
    notified: false,
  };
  for (const id of ids) {
    const row = ctx.stmt.message.get(id) as MessageRow | undefined;
    if (!row) {
      fx.result.finished.push(id);
      continue;
    }
    if (isLeased(id)) {
      fx.result.busy.push(id);
      continue;
    }
    const filtered = action.state !== undefined && action.state !== 'sending' && action.state !== row.state;
    if (filtered || !ACTION_APPLIES[action.action].includes(row.state)) {
      fx.result.unchanged.push({ id, state: row.state });
      continue;
    }
    applyOne(ctx, action.action, row, fx);
    fx.result.changed.push(id);
  }
  return fx;
}

function move(fx: ActionEffects, from: StoredMessageState, to: StoredMessageState): void {
  fx.stateDelta[from] -= 1;
  fx.stateDelta[to] += 1;
}

function applyOne(ctx: Context, kind: QueueActionKind, row: MessageRow, fx: ActionEffects): void {
  const { stmt, a, now } = ctx;
  switch (kind) {
    case 'retry':
      a.setDueNow.run(now, row.id);
      fx.due.push(row.id);
      return;
    case 'hold':
      a.hold.run(now, row.id);
      move(fx, row.state, 'held');
      return;
    case 'release': {
      const state: StoredMessageState =
        (a.hasDeferred.pluck().get(row.id) as number) > 0 ? 'deferred' : 'queued';
      a.release.run(state, now, now, now, row.id);
      move(fx, 'held', state);
      fx.due.push(row.id);
      return;
    }
    case 'delete':
      deleteMessage(stmt, row.id);
      fx.stateDelta[row.state] -= 1;
      if (row.state !== 'failed') fx.pendingRecipientsDelta -= row.pending_recipients;
      if (row.body_in_file) fx.removedFiles.push(row.id);
      return;
    case 'bounce': {
      const before = ctx.ledger.before(row);
      fx.notified = ctx.ledger.onBounce(row, before, now) || fx.notified;
      a.failWaiting.run(OPERATOR_BOUNCE_REPLY, row.id);
      stmt.markFailed.run(now, row.attempts, row.id);
      move(fx, row.state, 'failed');
      fx.pendingRecipientsDelta -= row.pending_recipients;
      return;
    }
  }
}

/** What `performAction` needs of the spool (SqliteSpool.act). */
export interface ActionHost {
  stmt: SpoolStatements;
  a: ActionStatements;
  ledger: NotificationLedger;
  leases: LeaseTable;
  /** Run one operation in the group commit; resolves once committed. */
  commit(apply: () => OpResult<ActionEffects>): Promise<ActionEffects>;
  /** The spool's bookkeeping once the operation committed. */
  committed(fx: ActionEffects): void;
  /** A notification was owed (called once the messages are unpinned). */
  notificationOwed(): void;
}

/**
 * Resolve the action's messages, pin them (never leased from now on), wait up to `waitMs` for attempts in
 * progress on them to end, then apply the action to all of them in ONE group-commit operation.
 */
export async function performAction(
  host: ActionHost,
  action: QueueAction,
  waitMs: number,
): Promise<QueueActionResult> {
  const { leases } = host;
  const unknown: MessageId[] = [];
  const unchanged: QueueActionResult['unchanged'] = [];
  let targets: MessageId[] = [];
  if (action.all) {
    targets = selectAll(host.a, action, leases.leasedIds());
  } else {
    for (const id of new Set(action.ids ?? [])) {
      const row = host.stmt.message.get(id) as MessageRow | undefined;
      if (!row) unknown.push(id);
      else if (action.state === 'sending' && !leases.has(id)) unchanged.push({ id, state: row.state });
      else targets.push(id);
    }
  }
  for (const id of targets) leases.pin(id);
  let notified = false;
  try {
    const deadline = Date.now() + waitMs;
    for (const id of targets) await leases.whenUnleased(id, Math.max(0, deadline - Date.now()));
    const ctx = { stmt: host.stmt, a: host.a, ledger: host.ledger, now: Date.now() };
    const fx = await host.commit(() => {
      const effects = applyAction(ctx, action, targets, (id) => leases.has(id));
      return { value: effects, onCommit: () => host.committed(effects) };
    });
    fx.result.unknown.push(...unknown);
    fx.result.unchanged.push(...unchanged);
    notified = fx.notified;
    return fx.result;
  } finally {
    for (const id of targets) leases.unpin(id);
    if (notified) host.notificationOwed();
  }
}
