// Package localrt is the local runtime: one process that serves the whole service on an
// embedded store. It holds the WebSocket endpoint for end users, the backend REST endpoints
// (/user/online, /messages, /events) behind the API key, and the loops that stand in for
// the AWS plumbing: the projector fed by the store's change feed, the grace timers, and the
// deliverer draining the local queue. It uses the same core packages as the Lambda
// functions (presence, auth, delivery, onlineapi). A Server is safe for concurrent use.
package localrt
