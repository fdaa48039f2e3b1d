/**
 * The DynamoDB client's timeouts are enforced: an endpoint that accepts the connection and then never answers
 * (a hung proxy, a frozen dynalite) fails the request after requestTimeoutMs instead of holding a delivery or
 * an AUTH for ever. Before `throwOnRequestTimeout`, the SDK only logged a warning and kept waiting.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { GetItemCommand } from '@aws-sdk/client-dynamodb';
import { createDynamoDbClient } from '../src/policy/dynamodb-client';
import { TEST_CREDENTIALS, TEST_REGION } from './helpers/dynalite';

test('a request to an endpoint that never answers fails after requestTimeoutMs', async () => {
  const held: http.ServerResponse[] = [];
  // Reads the request, never replies.
  const server = http.createServer((_req, res) => void held.push(res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const client = createDynamoDbClient({
    endpoint: `http://127.0.0.1:${port}`,
    region: TEST_REGION,
    credentials: TEST_CREDENTIALS,
    maxAttempts: 1,
    requestTimeoutMs: 300,
  });
  const started = Date.now();
  try {
    const outcome = await Promise.race([
      client.send(new GetItemCommand({ TableName: 't', Key: { email: { S: 'a@example.com' } } })).then(
        () => 'answered',
        (err: Error) => `failed: ${err.name}`,
      ),
      new Promise<string>((r) => setTimeout(() => r('still waiting after 5 s'), 5000).unref()),
    ]);
    assert.match(outcome, /^failed: /);
    assert.ok(Date.now() - started < 3000, `failed after ${Date.now() - started} ms`);
  } finally {
    client.destroy();
    for (const res of held) res.destroy();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
