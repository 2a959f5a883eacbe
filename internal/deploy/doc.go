// Package deploy holds the tests of the deployment: template.yaml (SAM / CloudFormation),
// the state machines it wires, and the Makefile targets that build the functions. Since the
// template cannot be deployed from a test, the tests prove its wiring: every function is
// built from its folder, gets every setting its main reads, and may call exactly the AWS
// actions its adapters call, on the resources they call them on.
package deploy
