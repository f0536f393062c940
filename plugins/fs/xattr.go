package fs

import (
	"context"
	"errors"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// The kernel's limits (include/uapi/linux/limits.h).
const (
	XattrNameMax = 255     // XATTR_NAME_MAX: bytes in a name, prefix included
	XattrSizeMax = 1 << 16 // XATTR_SIZE_MAX: bytes in a value
	XattrListMax = 1 << 16 // XATTR_LIST_MAX: bytes in a name list
)

// sizeRetries bounds how often a read is retried when the attribute grows
// between asking its size and reading it; then one read with the largest
// buffer the kernel allows settles it.
const sizeRetries = 3

// GetxattrRequest names one attribute of a path.
type GetxattrRequest struct {
	Path     handler.Name `json:"path"`
	Name     handler.Name `json:"name"`
	Nofollow bool         `json:"nofollow"`
}

// GetxattrResponse carries the value (base64 in JSON).
type GetxattrResponse struct {
	Value []byte `json:"value"`
}

// SetxattrRequest sets one attribute. Flags are "create" (fail with EEXIST
// if it exists) and "replace" (fail with ENODATA if it does not).
type SetxattrRequest struct {
	Path     handler.Name `json:"path"`
	Name     handler.Name `json:"name"`
	Value    []byte       `json:"value"`
	Flags    []string     `json:"flags"`
	Nofollow bool         `json:"nofollow"`
}

// ListxattrRequest names a path.
type ListxattrRequest struct {
	Path     handler.Name `json:"path"`
	Nofollow bool         `json:"nofollow"`
}

// ListxattrResponse lists attribute names, sorted. Names the caller may
// not see (trusted.* without CAP_SYS_ADMIN) are left out by the kernel.
type ListxattrResponse struct {
	Names []handler.Name `json:"names"`
}

// RemovexattrRequest names one attribute of a path.
type RemovexattrRequest struct {
	Path     handler.Name `json:"path"`
	Name     handler.Name `json:"name"`
	Nofollow bool         `json:"nofollow"`
}

// checkName applies the kernel's checks on a name before any system call,
// with its errnos: ERANGE for an empty or too long name.
func checkName(name string) error {
	switch {
	case name == "":
		return handler.Errorf(unix.ERANGE, "attribute name is empty")
	case len(name) > XattrNameMax:
		return handler.Errorf(unix.ERANGE, "attribute name is %d bytes, longer than %d", len(name), XattrNameMax)
	case strings.IndexByte(name, 0) >= 0:
		return handler.Errorf(unix.EINVAL, "attribute name contains a NUL byte")
	}
	return nil
}

func fail(op string, n *node, attr string, err error) error {
	if attr != "" {
		return handler.Errorf(errnoOf(err), "%s %s %q: %v", op, n.path, attr, err)
	}
	return handler.Errorf(errnoOf(err), "%s %s: %v", op, n.path, err)
}

func getxattr(ctx context.Context, req GetxattrRequest) (GetxattrResponse, error) {
	if err := checkName(string(req.Name)); err != nil {
		return GetxattrResponse{}, err
	}
	n, err := resolve(handler.EnvFrom(ctx), string(req.Path), req.Nofollow)
	if err != nil {
		return GetxattrResponse{}, err
	}
	defer n.close()
	value, err := readSized(XattrSizeMax, func(buf []byte) (int, error) {
		return getxattrAt(n.dir, n.name, string(req.Name), buf)
	})
	if err != nil {
		return GetxattrResponse{}, fail("getxattr", n, string(req.Name), err)
	}
	return GetxattrResponse{Value: value}, nil
}

// readSized reads a variable-size kernel answer: ask its size (an empty
// buffer), read into a buffer of that size, and ask again if it grew in
// between (ERANGE). An answer larger than limit is E2BIG, as the kernel
// says for values beyond what its interface carries.
func readSized(limit int, read func(buf []byte) (int, error)) ([]byte, error) {
	for range sizeRetries {
		size, err := read(nil)
		if err != nil {
			return nil, err
		}
		if size == 0 {
			return []byte{}, nil
		}
		if size > limit {
			return nil, unix.E2BIG
		}
		buf := make([]byte, size)
		n, err := read(buf)
		if errors.Is(err, unix.ERANGE) {
			continue // it grew
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	buf := make([]byte, limit)
	n, err := read(buf)
	if errors.Is(err, unix.ERANGE) {
		return nil, unix.E2BIG
	}
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

func setxattr(ctx context.Context, req SetxattrRequest) (Empty, error) {
	if err := checkName(string(req.Name)); err != nil {
		return Empty{}, err
	}
	if len(req.Value) > XattrSizeMax {
		return Empty{}, handler.Errorf(unix.E2BIG, "value is %d bytes, larger than %d", len(req.Value), XattrSizeMax)
	}
	flags := 0
	for _, f := range req.Flags {
		switch f {
		case "create":
			flags |= unix.XATTR_CREATE
		case "replace":
			flags |= unix.XATTR_REPLACE
		default:
			return Empty{}, handler.Errorf(unix.EINVAL, "unknown flag %q (want create or replace)", f)
		}
	}
	n, err := resolve(handler.EnvFrom(ctx), string(req.Path), req.Nofollow)
	if err != nil {
		return Empty{}, err
	}
	defer n.close()
	if err := setxattrAt(n.dir, n.name, string(req.Name), req.Value, flags); err != nil {
		return Empty{}, fail("setxattr", n, string(req.Name), err)
	}
	return Empty{}, nil
}

func listxattr(ctx context.Context, req ListxattrRequest) (ListxattrResponse, error) {
	n, err := resolve(handler.EnvFrom(ctx), string(req.Path), req.Nofollow)
	if err != nil {
		return ListxattrResponse{}, err
	}
	defer n.close()
	list, err := readSized(XattrListMax, func(buf []byte) (int, error) {
		return listxattrAt(n.dir, n.name, buf)
	})
	if err != nil {
		return ListxattrResponse{}, fail("listxattr", n, "", err)
	}
	names := []handler.Name{}
	for _, name := range strings.Split(string(list), "\x00") {
		if name != "" {
			names = append(names, handler.Name(name))
		}
	}
	slices.Sort(names)
	return ListxattrResponse{Names: names}, nil
}

func removexattr(ctx context.Context, req RemovexattrRequest) (Empty, error) {
	if err := checkName(string(req.Name)); err != nil {
		return Empty{}, err
	}
	n, err := resolve(handler.EnvFrom(ctx), string(req.Path), req.Nofollow)
	if err != nil {
		return Empty{}, err
	}
	defer n.close()
	if err := removexattrAt(n.dir, n.name, string(req.Name)); err != nil {
		return Empty{}, fail("removexattr", n, string(req.Name), err)
	}
	return Empty{}, nil
}
