/**
 * A real DynamoDB-compatible server for tests: dynalite in-process on 127.0.0.1 (ephemeral port), backed by
 * LevelDB in a temporary directory so it can be stopped (DynamoDB unreachable) and started again on the
 * same port with its data. Counts the requests it receives, by operation, to measure DynamoDB cost.
 */
import fs from 'node:fs';
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  CreateTableCommand,
  DescribeTableCommand,
  DynamoDBClient,
  PutItemCommand,
  type AttributeValue,
} from '@aws-sdk/client-dynamodb';
// dynalite ships no types.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const dynalite = require('dynalite') as (options: Record<string, unknown>) => http.Server;

// The SDK warns once per process about Node 20 support; tests must stay quiet.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

export const TEST_REGION = 'us-east-1';
export const TEST_CREDENTIALS = { accessKeyId: 'test', secretAccessKey: 'test' };

export interface Dynalite {
  endpoint: string;
  port: number;
  /** Environment for a child process (relay, CLI) to reach this server. */
  env: Record<string, string>;
  /** A new client pointed at this server (closed by close()). Options override the defaults. */
  client(options?: { maxAttempts?: number }): DynamoDBClient;
  /** Requests received so far for one operation (e.g. 'BatchGetItem'), or all when omitted. */
  requests(operation?: string): number;
  resetRequests(): void;
  createTable(name: string, key?: string): Promise<void>;
  put(table: string, item: Record<string, AttributeValue>): Promise<void>;
  /** Stop listening (connections refused); data is kept. */
  stop(): Promise<void>;
  /** Listen again on the same port. */
  start(): Promise<void>;
  running(): boolean;
  close(): Promise<void>;
}

export async function startDynalite(): Promise<Dynalite> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dynalite-'));
  const server = dynalite({ path: dir, createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  const counts = new Map<string, number>();
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('request', (req: http.IncomingMessage) => {
    const target = String(req.headers['x-amz-target'] ?? '');
    const op = target.slice(target.indexOf('.') + 1) || 'unknown';
    counts.set(op, (counts.get(op) ?? 0) + 1);
  });

  let running = false;
  const listen = (port: number) =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        running = true;
        resolve();
      });
    });
  await listen(0);
  const port = (server.address() as AddressInfo).port;
  const endpoint = `http://127.0.0.1:${port}`;
  const clients: DynamoDBClient[] = [];

  const stop = async () => {
    if (!running) return;
    running = false;
    const closed = new Promise<void>((resolve, reject) =>
      server.close((err) => (err ? reject(err) : resolve())),
    );
    for (const s of sockets) s.destroy();
    await closed;
  };

  const admin = new DynamoDBClient({ endpoint, region: TEST_REGION, credentials: TEST_CREDENTIALS });
  clients.push(admin);

  const d: Dynalite = {
    endpoint,
    port,
    env: {
      AWS_ENDPOINT_URL_DYNAMODB: endpoint,
      AWS_REGION: TEST_REGION,
      AWS_ACCESS_KEY_ID: TEST_CREDENTIALS.accessKeyId,
      AWS_SECRET_ACCESS_KEY: TEST_CREDENTIALS.secretAccessKey,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    client(options = {}) {
      const c = new DynamoDBClient({
        endpoint,
        region: TEST_REGION,
        credentials: TEST_CREDENTIALS,
        maxAttempts: options.maxAttempts ?? 1,
        requestHandler: { connectionTimeout: 1_000, requestTimeout: 3_000 },
      });
      clients.push(c);
      return c;
    },
    requests(operation) {
      if (operation) return counts.get(operation) ?? 0;
      let n = 0;
      for (const v of counts.values()) n += v;
      return n;
    },
    resetRequests() {
      counts.clear();
    },
    async createTable(name, key = 'email') {
      await admin.send(
        new CreateTableCommand({
          TableName: name,
          KeySchema: [{ AttributeName: key, KeyType: 'HASH' }],
          AttributeDefinitions: [{ AttributeName: key, AttributeType: 'S' }],
          BillingMode: 'PAY_PER_REQUEST',
        }),
      );
      // Wait for ACTIVE (bounded), so a stop() right after cannot leave the table half-created.
      for (let i = 0; i < 100; i++) {
        const t = await admin.send(new DescribeTableCommand({ TableName: name }));
        if (t.Table?.TableStatus === 'ACTIVE') return;
        await new Promise((r) => setTimeout(r, 10));
      }
      throw new Error(`table ${name} did not become ACTIVE`);
    },
    async put(table, item) {
      await admin.send(new PutItemCommand({ TableName: table, Item: item }));
    },
    stop,
    start: async () => {
      if (!running) await listen(port);
    },
    running: () => running,
    async close() {
      for (const c of clients) c.destroy();
      await stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return d;
}
