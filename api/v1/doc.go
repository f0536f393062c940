// Package apiv1 is the generated Go code of the nsplug node API,
// nsplug.api.v1 (nsplug.proto beside it): the gRPC service that
// `nsplug serve` offers on its unix socket, and its clients' stubs.
// `make proto` regenerates it.
package apiv1
