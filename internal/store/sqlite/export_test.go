package sqlite

// HoldSnapshot is holdSnapshot, for the package's external tests.
var HoldSnapshot = holdSnapshot
