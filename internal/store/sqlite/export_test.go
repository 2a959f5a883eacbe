package sqlite

// HoldSnapshot is holdSnapshot, for the package's external tests.
var HoldSnapshot = holdSnapshot

// StreamIndexLen is how many queue positions the streams' index in memory holds (kept,
// gone or a gap inside a user's range), over every user.
func (s *Store) StreamIndexLen() int {
	s.streams.mu.Lock()
	defer s.streams.mu.Unlock()
	n := 0
	for _, u := range s.streams.m {
		n += len(u.kept)
	}
	return n
}

// ExecDB runs statements on a store file on a connection of its own (execDB).
var ExecDB = execDB
