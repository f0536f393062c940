// Package apiv1 is the generated Go code of the nsplug node API's
// messages, nsplug.api.v1 (nsplug.proto beside it). The gRPC service that
// `nsplug serve` offers on its unix socket, and its clients' stubs, are
// package service (service/service.proto), apart so that code that only
// encodes the messages, such as the fast path's client (api/fast), links
// no gRPC. `make proto` regenerates both.
package apiv1
