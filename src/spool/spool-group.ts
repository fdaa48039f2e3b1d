/**
 * The rows of an ordered group (SqliteSpool.storeGroup): every message as `store` would insert it, its
 * reception JSON also carrying the message's route, and each message after the first linked to its
 * predecessor by `after_id`. Runs inside one operation of a group commit, so the group is all or nothing.
 */
import type { MessageId } from '../types';
import type { ReadBody } from './body-files';
import type { GroupMessage } from './spool';
import type { GroupStatements, SpoolStatements } from './spool-schema';

export interface GroupMember {
  id: MessageId;
  message: GroupMessage;
  read: ReadBody;
}

/** Inserts the group; returns how many recipients it added to the pending set. */
export function insertGroup(
  stmt: SpoolStatements,
  groupStmt: GroupStatements,
  members: GroupMember[],
  receivedAt: number,
): number {
  let recipientCount = 0;
  members.forEach(({ id, message, read }, i) => {
    const { envelope, reception, route } = message;
    const receptionJson = JSON.stringify({
      clientAddress: reception.clientAddress,
      heloName: reception.heloName,
      authUser: reception.authUser,
      route,
    });
    const recipients = [...envelope.recipients];
    recipientCount += recipients.length;
    stmt.insertMessage.run(
      id,
      envelope.mailFrom,
      receptionJson,
      receivedAt,
      read.size,
      read.content === undefined ? 1 : 0,
      receivedAt,
      recipients.length,
    );
    recipients.forEach((recipient, position) => stmt.insertRecipient.run(id, position, recipient));
    if (read.content) stmt.insertBody.run(id, read.content);
    if (i > 0) groupStmt.setAfter.run(members[i - 1].id, id);
  });
  return recipientCount;
}
