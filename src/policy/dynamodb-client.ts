/**
 * The DynamoDB client shared by the suppression list and the API-key authenticator. Region, credentials and
 * endpoint come from the AWS SDK's standard chain (AWS_REGION, AWS_ENDPOINT_URL_DYNAMODB, instance role...)
 * unless given here (tests pass an explicit endpoint and dummy credentials).
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';

export interface DynamoDbClientOptions {
  /** Use this client instead of creating one (its owner closes it). */
  client?: DynamoDBClient;
  endpoint?: string;
  region?: string;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** SDK attempts per request, including its own throttling retries (default 3). */
  maxAttempts?: number;
  /** TCP connect timeout (default 2 s): an unreachable table must not hold a delivery for long. */
  connectionTimeoutMs?: number;
  /** Whole-request timeout (default 5 s). */
  requestTimeoutMs?: number;
}

export function createDynamoDbClient(options: DynamoDbClientOptions = {}): DynamoDBClient {
  if (options.client) return options.client;
  return new DynamoDBClient({
    ...(options.endpoint ? { endpoint: options.endpoint } : {}),
    ...(options.region ? { region: options.region } : {}),
    ...(options.credentials ? { credentials: options.credentials } : {}),
    maxAttempts: options.maxAttempts ?? 3,
    requestHandler: {
      connectionTimeout: options.connectionTimeoutMs ?? 2_000,
      requestTimeout: options.requestTimeoutMs ?? 5_000,
      // Without it @smithy/node-http-handler only logs a warning when requestTimeout passes, and a table
      // endpoint that accepts the connection but never answers holds a delivery (or an AUTH) for ever.
      throwOnRequestTimeout: true,
    },
  });
}
