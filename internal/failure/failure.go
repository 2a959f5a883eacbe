// Package failure holds the sentinel errors that adapters map their services' errors to,
// so the core and the handlers can branch on them without knowing any SDK: a throttled
// call is retried later, a conflict means the state moved under a conditional write.
package failure

import "errors"

var (
	// ErrThrottled: the service refused the call for rate reasons; retry with backoff.
	ErrThrottled = errors.New("throttled")
	// ErrConflict: a conditional write found the item in another state.
	ErrConflict = errors.New("condition failed")
	// ErrUnavailable: the service could not be reached or answered with a server error.
	ErrUnavailable = errors.New("unavailable")
)
