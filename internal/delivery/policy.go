package delivery

import "github.com/wspresence/wspresence/events"

// The delivery policy both runtimes follow: how an accepted message becomes deliveries and
// which id it carries (both runtimes), and when a failing delivery stops being retried (the
// AWS sender, whose posts can fail for other reasons than a gone connection; locally a post
// only ever finds its connection gone, which is an outcome, not a retry).

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
// On AWS the attempts are the queue's receives, up to its maxReceiveCount.
func LastAttempt(attempt, maxAttempts int) bool {
	return maxAttempts > 0 && attempt >= maxAttempts
}
