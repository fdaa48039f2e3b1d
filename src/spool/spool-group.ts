/**
 * Ordered groups (SqliteSpool.storeGroup, the autoresponder's replies to one request, and a notification,
 * a group of one): every message is inserted as `store` would insert it, its reception JSON also carrying
 * the message's route and, for a notification, its type and the message it reports on, and each
 * message after the first is linked to its predecessor by `after_id`. The insert runs inside ONE operation
 * of a group commit, so a group is all or nothing (spool-store.ts). The order rule: `lease` and `nextDueAt`
 * (spool-delivery.ts) skip a message whose predecessor is still to be delivered (`isBlocked`); the link is
 * stored with the message, so a restart keeps it.
 */
import type { MessageId } from '../types';
import { bodyFilePath, readBody, removeQuietly, type ReadBody } from './body-files';
import { newQueueId } from './queue-id';
import type { GroupMessage } from './spool';
import { receptionJson, type SpoolStatements } from './spool-schema';
import { insertMessage } from './spool-outcomes';

export interface GroupMember {
  id: MessageId;
  message: GroupMessage;
  read: ReadBody;
}

/**
 * Reads every body of the group (large ones to their own file, as `store` does). On failure destroys the
 * remaining bodies, removes the files already written and rethrows.
 */
export async function readGroupBodies(
  messages: GroupMessage[],
  options: { bodiesDir: string; inlineMax: number },
): Promise<GroupMember[]> {
  const members: GroupMember[] = [];
  try {
    for (const message of messages) {
      const id = newQueueId();
      const read = await readBody(message.body, { id, ...options });
      members.push({ id, message, read });
    }
    return members;
  } catch (err) {
    for (const m of messages) m.body.destroy();
    for (const m of bodyFileMembers(members)) await removeQuietly(bodyFilePath(options.bodiesDir, m.id));
    throw err;
  }
}

/** Members whose body is in its own file (not inline). */
export function bodyFileMembers(members: GroupMember[]): GroupMember[] {
  return members.filter((m) => m.read.content === undefined);
}

/** Inserts the group; returns how many recipients it added to the waiting set. */
export function insertGroup(stmt: SpoolStatements, members: GroupMember[], receivedAt: number): number {
  let recipientCount = 0;
  members.forEach(({ id, message, read }, i) => {
    const { envelope, reception, route } = message;
    const stored = receptionJson(reception, { route });
    const recipients = [...envelope.recipients];
    recipientCount += recipients.length;
    const dsn = envelope.dsn;
    insertMessage(
      stmt,
      {
        id,
        mailFrom: envelope.mailFrom,
        receptionJson: stored,
        receivedAt,
        recipients,
        dsn,
        tenant: reception.tenant,
      },
      read,
    );
    if (i > 0) stmt.setAfter.run(members[i - 1].id, id);
  });
  return recipientCount;
}

/** True when the message was stored after another one (storeGroup) that is still to be delivered. */
export function isBlocked(stmt: SpoolStatements, id: MessageId): boolean {
  return stmt.blocked.get(id) !== undefined;
}

/** The route stored with a message by `storeGroup`, or undefined. */
export function storedRoute(stmt: SpoolStatements, id: MessageId): string | undefined {
  const json = stmt.receptionOf.pluck().get(id) as string | undefined;
  if (json === undefined) return undefined;
  const route = (JSON.parse(json) as { route?: unknown }).route;
  return typeof route === 'string' ? route : undefined;
}
