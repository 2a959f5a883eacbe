// Package events defines the vocabulary wspresence speaks on the wire: the connection log
// (ConnectionOpened, ConnectionClosed, ActivityRecorded) that both runtimes append to their
// event store, the integration events published to subscribers (UserOnline, UserOffline,
// MessageDelivered, MessageUndeliverable) in the EventBridge envelope, and the message that
// other systems enqueue for delivery. All types are plain values, safe to share between
// goroutines once built; every JSON shape here has a JSON Schema in the schemas package.
package events
