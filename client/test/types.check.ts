// Compile-time checks of the published types (tsc -p test, no output): what an application
// writes against the package type-checks, and misuse does not.
import {
  AuthError,
  Client,
  type ConnectionState,
  type Position,
  type ReceivedMessage,
  type WebSocketConstructor,
  WspresenceError,
} from '../src/index.js';

// The browser's WebSocket class fits the option.
const BrowserWebSocket: WebSocketConstructor = WebSocket;

const client = new Client({
  url: 'ws://127.0.0.1:8080/',
  getToken: async () => 'jwt',
  WebSocket: BrowserWebSocket,
  backoff: { initialMs: 250, maxMs: 10_000 },
  stableAfterMs: 5_000,
});
const stop: () => void = client.on('message', (m: ReceivedMessage) => {
  const body: string = m.body;
  const offset: number = m.offset;
  void body;
  void offset;
});
stop();
client.on('state', (s: ConnectionState) => {
  if (s === 'connected') return;
});
client.on('error', (e: WspresenceError) => {
  if (e instanceof AuthError) {
    const refusal: string = e.refusal;
    void refusal;
  }
  const fatal: boolean = e.fatal;
  void fatal;
});
client.on('discontinuity', (d) => {
  const reason: string = d.reason;
  void reason;
});
const at: Position | undefined = client.position;
void at;
client.connect();
void client.close().then(() => undefined);

// @ts-expect-error: no such event
client.on('messages', () => undefined);
// @ts-expect-error: a message listener gets a ReceivedMessage, not a string
client.on('message', (m: string) => m);
// @ts-expect-error: getToken is required
new Client({ url: 'ws://127.0.0.1:8080/' });
