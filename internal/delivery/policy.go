package delivery

import "github.com/wspresence/wspresence/events"

// The delivery policy both runtimes follow: how an accepted message becomes deliveries,
// which id it carries, and when a failing delivery stops being retried. The local runtime
// and the AWS sender call these; neither decides it on its own.

// DefaultMaxAttempts is how often the local runtime tries a message whose posts fail
// before reporting it MessageUndeliverable{failed}. On AWS the queue's maxReceiveCount
// (template parameter MaxReceiveCount) plays this part.
const DefaultMaxAttempts = 3

// Task is one delivery: one message to one user.
type Task struct {
	MessageID, UserID, Body string
}

// Plan splits an accepted message into one delivery per recipient (in the message's
// order, each user once). The message id is the message's MessageId, else fallbackID:
// the SQS message id on AWS (stable across redeliveries of that SQS message), a new UUID
// given at enqueue locally.
func Plan(m events.Message, fallbackID string) []Task {
	id := m.MessageID
	if id == "" {
		id = fallbackID
	}
	users := m.Recipients()
	out := make([]Task, len(users))
	for i, u := range users {
		out[i] = Task{MessageID: id, UserID: u, Body: m.Body}
	}
	return out
}

// LastAttempt reports whether attempt (counted from 1) of a delivery whose posts failed is
// its last: then the failure is reported (MessageUndeliverable{failed}) instead of retried.
func LastAttempt(attempt, maxAttempts int) bool {
	return maxAttempts > 0 && attempt >= maxAttempts
}
