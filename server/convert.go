package server

import (
	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/apiconv"
)

// CallRequest is the API's CallRequest for a core.Request (for Go clients
// of the daemon).
func CallRequest(req core.Request) *apiv1.CallRequest { return apiconv.CallRequest(req) }

// PluginInfos are the core's descriptions of a Plugins answer.
func PluginInfos(resp *apiv1.PluginsResponse) []core.PluginInfo { return apiconv.PluginInfos(resp) }
