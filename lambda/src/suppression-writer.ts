/**
 * Writes suppression entries into the DynamoDB table the relay reads (partition key `email`). One UpdateItem
 * per address: first seen kept, last seen and the latest cause overwritten, `count` incremented, and the
 * feedback id remembered in `feedbackIds` so an SNS redelivery of the same notification changes nothing
 * (the condition fails and that is treated as already done). Other errors are thrown to the caller.
 */
import {
  ConditionalCheckFailedException,
  UpdateItemCommand,
  type AttributeValue,
  type DynamoDBClient,
} from '@aws-sdk/client-dynamodb';
import type { SuppressionEntry } from './ses-notification';

export type WriteResult = 'written' | 'duplicate';

export async function writeSuppression(
  client: DynamoDBClient,
  table: string,
  entry: SuppressionEntry,
): Promise<WriteResult> {
  const names: Record<string, string> = {
    '#reason': 'reason',
    '#feedbackId': 'feedbackId',
    '#feedbackIds': 'feedbackIds',
    '#firstSeen': 'firstSeen',
    '#lastSeen': 'lastSeen',
    '#count': 'count',
  };
  const values: Record<string, AttributeValue> = {
    ':reason': { S: entry.reason },
    ':fid': { S: entry.feedbackId },
    ':fids': { SS: [entry.feedbackId] },
    ':seen': { S: entry.timestamp },
    ':one': { N: '1' },
  };
  const sets = [
    '#reason = :reason',
    '#feedbackId = :fid',
    '#firstSeen = if_not_exists(#firstSeen, :seen)',
    '#lastSeen = :seen',
  ];
  const optional: Array<[keyof SuppressionEntry, string]> = [
    ['bounceType', 'bounceType'],
    ['bounceSubType', 'bounceSubType'],
    ['complaintFeedbackType', 'complaintFeedbackType'],
    ['messageId', 'messageId'],
  ];
  for (const [field, attr] of optional) {
    const v = entry[field];
    if (v) {
      names[`#${attr}`] = attr;
      values[`:${attr}`] = { S: v };
      sets.push(`#${attr} = :${attr}`);
    }
  }
  try {
    await client.send(
      new UpdateItemCommand({
        TableName: table,
        Key: { email: { S: entry.email } },
        UpdateExpression: `SET ${sets.join(', ')} ADD #count :one, #feedbackIds :fids`,
        ConditionExpression: 'attribute_not_exists(#feedbackIds) OR NOT contains(#feedbackIds, :fid)',
        ExpressionAttributeNames: names,
        ExpressionAttributeValues: values,
      }),
    );
    return 'written';
  } catch (err) {
    if (
      err instanceof ConditionalCheckFailedException ||
      (err as Error)?.name === 'ConditionalCheckFailedException'
    ) {
      return 'duplicate';
    }
    throw err;
  }
}
