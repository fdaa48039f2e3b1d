/**
 * Builds the DynamoDB-backed parts from config.policy, for relay.ts: the suppression list (USE_BLOCKLIST)
 * and the API-key authenticator (USE_APIKEY), sharing one DynamoDB client that close() destroys.
 */
import type { PolicyConfig } from '../config';
import { ApiKeyAuthenticator } from '../auth/api-keys';
import type { Authenticator } from '../auth/authenticator';
import type { Logger } from '../observability/logger';
import { createDynamoDbClient, type DynamoDbClientOptions } from './dynamodb-client';
import { allowAll, type RecipientPolicy } from './policy';
import { SuppressionList } from './suppression-list';

export interface DynamoPolicy {
  /** The suppression list, or allowAll when USE_BLOCKLIST is off. Its close() also closes the client. */
  policy: RecipientPolicy;
  /** API-key AUTH when USE_APIKEY is on. */
  apiKeys?: Authenticator;
}

export function createDynamoPolicy(
  config: PolicyConfig,
  logger: Logger,
  clientOptions: DynamoDbClientOptions = {},
): DynamoPolicy {
  const useBlocklist = config.useBlocklist && !!config.table;
  const useApiKey = config.useApiKey && !!config.apiKeysTable;
  if (!useBlocklist && !useApiKey) return { policy: allowAll };

  const client = createDynamoDbClient(clientOptions);
  const ownsClient = !clientOptions.client;
  const list = useBlocklist
    ? new SuppressionList({
        client,
        table: config.table!,
        cacheTtlMs: config.cacheTtlMs,
        cacheMax: config.cacheMax,
        logger: logger.child({ component: 'suppression-list' }),
      })
    : undefined;
  const apiKeys = useApiKey
    ? new ApiKeyAuthenticator({
        client,
        table: config.apiKeysTable!,
        cacheTtlMs: config.apiKeyCacheTtlMs,
        logger: logger.child({ component: 'api-keys' }),
      })
    : undefined;

  const policy: RecipientPolicy = {
    check: (recipients) => (list ? list.check(recipients) : allowAll.check(recipients)),
    healthy: () => (list ? list.healthy() : true),
    close: async () => {
      await list?.close();
      if (ownsClient) client.destroy();
    },
  };
  return { policy, ...(apiKeys ? { apiKeys } : {}) };
}
