package localrt

import "time"

// SetStoreFault makes the server's store call fault before every group commit and fail the
// commit with its error (a full disk, say).
func SetStoreFault(c *Config, fault func() error) { c.storeFault = fault }

// SetReconcileInterval spaces the reconciliation passes.
func SetReconcileInterval(c *Config, d time.Duration) { c.reconcileInterval = d }

// StoreQueueBytes is the bound of the message bytes handed to the store at once.
const StoreQueueBytes = storeQueueBytes
