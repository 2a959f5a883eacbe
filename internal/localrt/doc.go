// Package localrt is the local runtime: one process that serves the whole service on an
// embedded store. It holds the WebSocket endpoint for end users, the backend REST endpoints
// (/user/online, /messages, /events, and the SQS protocol) behind the API key, and what
// stands in for the AWS plumbing: the store's group commit folds every append into the view
// (presence.Apply, in log order), the grace timers run the core's decision on the same
// write connection, and the pump dispatches the queued messages from memory, their outcomes
// recorded once their frames are written. It uses the same core packages as the Lambda
// functions (presence, auth, delivery, onlineapi). A Server is safe for concurrent use.
package localrt
