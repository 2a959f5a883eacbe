// Executes the state machines of statemachines/ with a local ASL engine
// (aws-local-stepfunctions), their Task states replaced by functions that record their
// input and answer as the AWS service would, their Wait states set to 0.
// Run: node --test statemachines/test/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

// The engine uses Promise.withResolvers, which Node 20 lacks.
Promise.withResolvers ??= function withResolvers() {
  let resolve, reject;
  const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
  return { promise, resolve, reject };
};

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { StateMachine } = require('aws-local-stepfunctions');

const substitutions = {
  ViewTable: 'wspresence-view',
  EventBus: 'wspresence-bus',
  QueueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/wspresence-messages',
};

function load(name) {
  let text = readFileSync(path.join(here, '..', name), 'utf8');
  for (const [k, v] of Object.entries(substitutions)) text = text.replaceAll('${' + k + '}', v);
  assert.doesNotMatch(text, /\$\{[A-Za-z]+\}/, 'every substitution is defined');
  return new StateMachine(JSON.parse(text));
}

function awsError(name, message = name) {
  const e = new Error(message);
  e.name = name;
  return e;
}

const graceInput = {
  userId: '1234',
  offlineSince: '1795687500456000000',
  graceSeconds: 5,
  detail: {
    eventId: '0c5b393c-e322-5856-b687-d47731a001c6',
    userId: '1234',
    at: '2026-11-26T10:05:00.456Z',
    lastActivity: '2026-11-26T10:05:00.456Z',
  },
};

async function runGrace(announce) {
  const calls = { update: [], put: [] };
  const machine = load('offline-grace.asl.json');
  const execution = machine.run(graceInput, {
    overrides: {
      waitTimeOverrides: { WaitForGrace: 0 },
      retryIntervalOverrides: { AnnounceOffline: 0, PublishUserOffline: 0 },
      taskResourceLocalHandlers: {
        AnnounceOffline: async (input) => { calls.update.push(input); return announce(calls.update.length); },
        PublishUserOffline: async (input) => { calls.put.push(input); return { FailedEntryCount: 0, Entries: [{ EventId: 'e1' }] }; },
      },
    },
  });
  const result = await execution.result;
  return { calls, result };
}

function assertUpdate(update) {
  assert.equal(update.TableName, 'wspresence-view');
  assert.deepEqual(update.Key, { pk: { S: '1234' }, sk: { S: '#USER' } });
  assert.equal(update.ConditionExpression, 'attribute_not_exists(live) AND announced = :online AND offlineSince = :since');
  assert.deepEqual(update.ExpressionAttributeValues[':since'], { N: graceInput.offlineSince });
}

test('grace: still offline and the update succeeds: UserOffline is published once', async () => {
  const { calls, result } = await runGrace(() => ({}));
  assert.equal(calls.update.length, 1);
  assertUpdate(calls.update[0]);
  assert.equal(calls.put.length, 1);
  assert.deepEqual(calls.put[0].Entries, [{
    EventBusName: 'wspresence-bus', Source: 'wspresence', DetailType: 'UserOffline', Detail: graceInput.detail,
  }]);
  assert.equal(result.published.failed, 0);
});

test('grace: the user reconnected (the condition fails): nothing is published', async () => {
  const { calls, result } = await runGrace(() => { throw awsError('DynamoDB.ConditionalCheckFailedException', 'The conditional request failed'); });
  assert.equal(calls.update.length, 1);
  assert.equal(calls.put.length, 0);
  assert.equal(result.skipped.Error, 'DynamoDB.ConditionalCheckFailedException');
});

test('grace: a second run of the same period (already announced) publishes nothing', async () => {
  const first = await runGrace(() => ({}));
  assert.equal(first.calls.put.length, 1);
  const second = await runGrace(() => { throw awsError('DynamoDB.ConditionalCheckFailedException'); });
  assert.equal(second.calls.put.length, 0);
});

test('grace: a throttled update is retried, then publishes once', async () => {
  const { calls } = await runGrace((n) => { if (n < 3) throw awsError('DynamoDB.ThrottlingException'); return {}; });
  assert.equal(calls.update.length, 3);
  assert.equal(calls.put.length, 1);
});

test('broadcast: 2,345 users become 24 messages of at most 100 ids in 3 SendMessageBatch calls', async () => {
  const userIds = Array.from({ length: 2345 }, (_, i) => `u${i}`);
  const batches = [];
  const machine = load('broadcast.asl.json');
  await machine.run({ userIds, body: 'maintenance at noon', messageId: 'broadcast-7' }, {
    overrides: {
      taskResourceLocalHandlers: {
        SendMessageBatch: async (input) => {
          batches.push(input);
          return { Successful: input.Entries.map((e) => ({ Id: e.Id })), Failed: [] };
        },
      },
    },
  }).result;
  assert.equal(batches.length, 3);
  const seen = [];
  for (const b of batches) {
    assert.equal(b.QueueUrl, substitutions.QueueUrl);
    assert.ok(b.Entries.length <= 10);
    assert.equal(new Set(b.Entries.map((e) => e.Id)).size, b.Entries.length, 'entry ids are unique in a batch');
    for (const e of b.Entries) {
      const msg = JSON.parse(e.MessageBody);
      assert.equal(msg.Body, 'maintenance at noon');
      assert.equal(msg.MessageId, 'broadcast-7');
      assert.ok(msg.UserIds.length >= 1 && msg.UserIds.length <= 100);
      seen.push(...msg.UserIds);
    }
  }
  assert.deepEqual(seen.sort(), [...userIds].sort(), 'every user exactly once');
  assert.deepEqual(batches.map((b) => b.Entries.length), [10, 10, 4]);
});
