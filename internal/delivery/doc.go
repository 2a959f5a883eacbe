// Package delivery delivers one message to every live connection of a user, the core that
// the local runtime and the sender Lambda function share. It reads the user's connections
// from the view, posts to each with bounded concurrency, records connections found gone as
// ConnectionClosed{gone}, and decides the outcome event (MessageDelivered or
// MessageUndeliverable). A Deliverer is safe for concurrent use if its ports are.
package delivery
