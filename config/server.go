package config

import (
	"net"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nsplug/nsplug/wire"
)

// Server is the [server] table: the settings of `nsplug serve`, the node
// daemon. Nothing else reads them; an embedding program ignores them.
type Server struct {
	// Socket is the absolute path of the unix socket the API listens on.
	Socket string `toml:"socket"`
	// SocketMode is the socket file's permission bits (TOML octal, 0o660).
	// Who may call what is decided per call by the Allow rules from the
	// caller's kernel credentials; the mode only keeps others from
	// connecting at all.
	SocketMode int `toml:"socket_mode"`
	// SocketGroup, a group name or number, owns the socket; empty keeps
	// the daemon's own group.
	SocketGroup string `toml:"socket_group"`
	// MetricsAddress serves Prometheus metrics over HTTP: a loopback
	// "host:port" ("127.0.0.1:9464", "[::1]:9464", "localhost:9464") or
	// the absolute path of a unix socket. Empty: no metrics.
	MetricsAddress string `toml:"metrics_address"`
	// AuditLog is the absolute path of the file that receives one JSON line
	// per call that changes state and per denial. Empty: no audit log.
	AuditLog string `toml:"audit_log"`
	// AuditDenialsPerMinutePerUser and AuditDenialsPerMinute bound the
	// denials that get an audit line of their own: a minute's worth for
	// each uid other than root, and for all of them together. Past them,
	// denials are counted, and one line a minute says how many there were
	// and whose (server.DenialsSummary).
	AuditDenialsPerMinutePerUser int `toml:"audit_denials_per_minute_per_user"`
	AuditDenialsPerMinute        int `toml:"audit_denials_per_minute"`
	// ShutdownGrace is how long SIGTERM or SIGINT lets calls in flight
	// finish before every plugin process is killed.
	ShutdownGrace Duration `toml:"shutdown_grace"`
	// MaxInstancesPerUser bounds the plugin instances, running or
	// starting, charged to the calls of one uid other than root (see
	// core.Account).
	MaxInstancesPerUser int `toml:"max_instances_per_user"`
	// MaxUserRequestBytes bounds one request message (a whole Call,
	// payload and fields, over either protocol) from a uid other than
	// root; root's are bounded by the API's own limit, MaxRequestBytes.
	MaxUserRequestBytes int `toml:"max_user_request_bytes"`
	// MaxCallsPerUser bounds the Call and Prepare requests of one uid
	// other than root in flight at once, over every connection, and,
	// apart, its direct channels open at once.
	MaxCallsPerUser int `toml:"max_calls_per_user"`
	// Allow are the [[server.allow]] rules. Root (uid 0) may always call
	// everything; everyone else needs a rule that names them, the type and
	// the target.
	Allow []AllowRule `toml:"allow"`
}

// AllowRule is one [[server.allow]] entry: the callers it admits, for
// which message types and which targets.
type AllowRule struct {
	// UIDs and GIDs name the callers: a caller matches when its uid is
	// listed or its primary or a supplementary group is, as the kernel
	// reports them for the connection (SO_PEERCRED, SO_PEERGROUPS). At
	// least one of the two is set.
	UIDs []uint32 `toml:"uids"`
	GIDs []uint32 `toml:"gids"`
	// Types are message type names or globs of them (path.Match syntax:
	// "procfs.*", "*"). At least one.
	Types []string `toml:"types"`
	// Targets is "any" (every process) or "owned": only processes whose
	// user namespace was created by the caller's uid (NS_GET_OWNER_UID),
	// the caller's own rootless containers. Required.
	Targets string `toml:"targets"`
}

// The bounds of Server.MaxUserRequestBytes: MaxRequestBytes is the API's
// limit on any one message (the contract's largest payload, with room for
// the fields around it).
const (
	MinUserRequestBytes = 4096
	MaxRequestBytes     = wire.MaxMessageBytes + 1<<20
)

// The values of AllowRule.Targets.
const (
	TargetsAny   = "any"
	TargetsOwned = "owned"
)

var targetKinds = []string{TargetsAny, TargetsOwned}

// MatchType reports whether the rule's Types admit the message type typ.
func (r *AllowRule) MatchType(typ string) bool {
	return slices.ContainsFunc(r.Types, func(glob string) bool {
		ok, _ := path.Match(glob, typ) // globs are checked by Validate
		return ok
	})
}

func (v *validator) server(k key, s *Server) {
	if sk := k.child("socket"); !filepath.IsAbs(s.Socket) || filepath.Clean(s.Socket) != s.Socket {
		v.fail(sk, "", "must be an absolute, clean path, got %q", s.Socket)
	}
	if mk := k.child("socket_mode"); s.SocketMode < 0 || s.SocketMode > 0o777 {
		v.fail(mk, "", "must be permission bits between 0o000 and 0o777, got %#o", s.SocketMode)
	}
	if ma := s.MetricsAddress; ma != "" {
		if err := checkMetricsAddress(ma); err != "" {
			v.fail(k.child("metrics_address"), "", "%s", err)
		}
	}
	if al := k.child("audit_log"); s.AuditLog != "" && !filepath.IsAbs(s.AuditLog) {
		v.fail(al, "", "must be an absolute path, got %q", s.AuditLog)
	}
	if dk := k.child("audit_denials_per_minute_per_user"); s.AuditDenialsPerMinutePerUser < 1 {
		v.fail(dk, "", "must be at least 1, got %d", s.AuditDenialsPerMinutePerUser)
	}
	if dk := k.child("audit_denials_per_minute"); s.AuditDenialsPerMinute < 1 {
		v.fail(dk, "", "must be at least 1, got %d", s.AuditDenialsPerMinute)
	}
	if gk := k.child("shutdown_grace"); s.ShutdownGrace.Duration < 0 {
		v.fail(gk, "", "must not be negative, got %q", s.ShutdownGrace.String())
	}
	if mk := k.child("max_instances_per_user"); s.MaxInstancesPerUser < 1 {
		v.fail(mk, "", "must be at least 1, got %d", s.MaxInstancesPerUser)
	}
	if rk := k.child("max_user_request_bytes"); s.MaxUserRequestBytes < MinUserRequestBytes || s.MaxUserRequestBytes > MaxRequestBytes {
		v.fail(rk, "", "must be between %d and %d, got %d", MinUserRequestBytes, MaxRequestBytes, s.MaxUserRequestBytes)
	}
	if ck := k.child("max_calls_per_user"); s.MaxCallsPerUser < 1 {
		v.fail(ck, "", "must be at least 1, got %d", s.MaxCallsPerUser)
	}
	ak := k.child("allow")
	for i := range s.Allow {
		r, rk := &s.Allow[i], ak.elem(i)
		if len(r.UIDs) == 0 && len(r.GIDs) == 0 {
			v.fail(rk, "", "rule #%d names nobody: set uids or gids", i+1)
		}
		tk := rk.child("types")
		if len(r.Types) == 0 {
			v.fail(tk, rk.canon, "rule #%d names no message types (\"*\" for all)", i+1)
		}
		for j, glob := range r.Types {
			if _, err := path.Match(glob, ""); err != nil || glob == "" {
				v.fail(tk, tk.elem(j).canon, "invalid type glob %q (want a type name or a path.Match pattern such as \"procfs.*\")", glob)
			}
		}
		if r.Targets == "" {
			v.fail(rk.child("targets"), rk.canon, "rule #%d: required (%s)", i+1, alternatives(targetKinds))
		} else {
			v.oneOf(rk.child("targets"), r.Targets, "targets", targetKinds)
		}
	}
}

// checkMetricsAddress returns why addr is not a loopback host:port or an
// absolute unix socket path, or "" if it is one.
func checkMetricsAddress(addr string) string {
	if strings.HasPrefix(addr, "/") {
		if filepath.Clean(addr) != addr {
			return "unix socket path " + strconv.Quote(addr) + " is not clean"
		}
		return ""
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "want a loopback host:port such as \"127.0.0.1:9464\" or an absolute unix socket path, got " + strconv.Quote(addr)
	}
	if host == "localhost" {
		return ""
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "host " + strconv.Quote(host) + " is not a loopback address: metrics are served on loopback or a unix socket only (they name the types and plugins in use)"
	}
	return ""
}
