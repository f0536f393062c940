package wire

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A plugin's options are checked by the plugin, at load. Its error
// crosses the process boundary as text (a start failure, a gRPC status):
// the form OptionError.Error writes is part of the contract, so that the
// core can find the key again (ParseOptionError) and point at its line in
// the configuration.

// OptionError is an invalid option: the key it names (dotted for a nested
// one, "max_read_bytes" or "limits.depth"; empty for the table as a whole)
// and what is wrong with it. sdk.Plugin.Configure returns one so that the core
// can point at the option's line.
type OptionError struct {
	Key string
	Msg string
}

// Error reads `invalid option "max_read_bytes": must not be negative`
// (`invalid options: ...` without a key). A core that receives the text
// from a plugin process finds the key again with ParseOptionError.
func (e *OptionError) Error() string {
	if e.Key == "" {
		return optionsPrefix + e.Msg
	}
	return optionPrefix + strconv.Quote(e.Key) + ": " + e.Msg
}

const (
	optionPrefix  = "invalid option "
	optionsPrefix = "invalid options: "
)

// OptionErrorf returns the OptionError of key with a formatted message.
func OptionErrorf(key, format string, args ...any) *OptionError {
	return &OptionError{Key: key, Msg: fmt.Sprintf(format, args...)}
}

// ParseOptionError finds the OptionError an error carries: in its chain,
// or, for an error that crossed a process boundary as text, in its
// message (as OptionError.Error wrote it).
func ParseOptionError(err error) (*OptionError, bool) {
	var oe *OptionError
	if err == nil {
		return nil, false
	}
	if errors.As(err, &oe) {
		return oe, true
	}
	msg := err.Error()
	if i := strings.Index(msg, optionPrefix+`"`); i >= 0 {
		rest := msg[i+len(optionPrefix):]
		if q, qerr := strconv.QuotedPrefix(rest); qerr == nil && strings.HasPrefix(rest[len(q):], ": ") {
			key, _ := strconv.Unquote(q)
			return &OptionError{Key: key, Msg: rest[len(q)+2:]}, true
		}
	}
	if i := strings.Index(msg, optionsPrefix); i >= 0 {
		return &OptionError{Msg: msg[i+len(optionsPrefix):]}, true
	}
	return nil, false
}
