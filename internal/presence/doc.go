// Package presence is the domain core of wspresence: the fold of the connection log into
// the per-user view and the decision of which transitions to announce.
//
// A user's connections form a two-phase set: a connection is live once its open has been
// seen and until its close has been seen, and a close wins over an open whatever order they
// arrive in. Applying the same event twice changes nothing, so the fold is idempotent and
// order-independent, as a projector fed by an at-least-once, per-item-ordered stream needs.
//
// Beside the live set the view keeps the state last announced to subscribers. UserOnline is
// announced when the live set becomes non-empty while the announced state is offline;
// UserOffline only when a grace period has passed with the live set empty. Transitions
// therefore alternate strictly per user and a reconnect inside the grace period is silent.
//
// The package is pure: no I/O, no clock, no goroutines. Stores load a User and a Conn,
// call Apply or ExpireGrace, and persist the results with the effects in one atomic step.
package presence
