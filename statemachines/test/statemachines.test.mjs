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

async function runBroadcast(userIds, answer) {
  const batches = [];
  const machine = load('broadcast.asl.json');
  const execution = machine.run({ userIds, body: 'hello all', messageId: 'broadcast-8' }, {
    overrides: {
      waitTimeOverrides: { Backoff: 0 },
      taskResourceLocalHandlers: {
        SendMessageBatch: async (input) => { batches.push(input); return answer(input, batches.length); },
      },
    },
  });
  return { batches, execution };
}

test('broadcast: entries SendMessageBatch reports failed are sent again, alone, until they go', async () => {
  const userIds = Array.from({ length: 350 }, (_, i) => `u${i}`);
  const { batches, execution } = await runBroadcast(userIds, (input, n) => {
    // The first call fails two of its four entries; the retry fails one again; then it goes.
    const failIds = n === 1 ? [input.Entries[1].Id, input.Entries[3].Id] : n === 2 ? [input.Entries[0].Id] : [];
    return {
      Successful: input.Entries.filter((e) => !failIds.includes(e.Id)).map((e) => ({ Id: e.Id, MessageId: 'm' })),
      Failed: failIds.map((Id) => ({ Id, SenderFault: false, Code: 'InternalError', Message: 'try again' })),
    };
  });
  await execution.result;
  assert.deepEqual(batches.map((b) => b.Entries.length), [4, 2, 1]);
  assert.deepEqual(batches[1].Entries.map((e) => e.Id), [batches[0].Entries[1].Id, batches[0].Entries[3].Id]);
  assert.deepEqual(batches[2].Entries, [batches[0].Entries[1]]);
  const delivered = new Set();
  for (const b of batches) for (const e of b.Entries) for (const u of JSON.parse(e.MessageBody).UserIds) delivered.add(u);
  assert.equal(delivered.size, 350, 'every user is in a sent entry');
});

test('broadcast: entries still failing after 5 retries fail the execution, naming them', async () => {
  const { batches, execution } = await runBroadcast(['a', 'b'], (input) => ({
    Successful: [], Failed: input.Entries.map((e) => ({ Id: e.Id, SenderFault: true, Code: 'InvalidMessageContents', Message: 'no' })),
  }));
  const result = await execution.result.then(() => null, (err) => err);
  assert.ok(result, 'the execution failed');
  assert.equal(result.cause?.name, 'BroadcastEntriesFailed');
  const failed = JSON.parse(result.cause.message);
  assert.deepEqual(failed.map((f) => f.Code), ['InvalidMessageContents'], 'the cause names the entries still failing');
  assert.equal(batches.length, 6, 'the first send and 5 retries');
});
