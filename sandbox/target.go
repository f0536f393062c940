package sandbox

// The target side: runs inside the re-executed binary, in package init,
// before the host program's main and without ever returning to it.

import (
	"encoding/json"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// File descriptors the parent hands over through exec.Cmd.ExtraFiles.
const (
	fdLifeline = 3 // read end; EOF means the starter is gone
	fdStatus   = 4 // write end; one report, then closed
)

func init() {
	payload, ok := os.LookupEnv(EnvVar)
	if !ok {
		return
	}
	runTarget(payload)
}

// stepError is a set-up failure together with the step that failed.
type stepError struct {
	step string
	err  error
}

func fail(step string, err error) *stepError { return &stepError{step, err} }

func runTarget(payload string) {
	// Refuse to scribble on arbitrary descriptors if the variable was set
	// by accident rather than by Start.
	for _, fd := range []int{fdLifeline, fdStatus} {
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
			os.Stderr.WriteString("sandbox: " + EnvVar + " is set but this process was not started by sandbox.Start\n")
			os.Exit(2)
		}
	}
	var spec targetSpec
	if err := json.Unmarshal([]byte(payload), &spec); err != nil {
		writeReport(report{Step: "decode options", Msg: err.Error()})
		os.Exit(1)
	}

	// Mount and pivot_root act on the whole process, but keep everything on
	// one thread anyway so nothing surprising happens between steps.
	runtime.LockOSThread()
	os.Unsetenv(EnvVar)

	if serr := setUpTarget(&spec); serr != nil {
		r := report{Step: serr.step, Msg: serr.err.Error()}
		var errno unix.Errno
		if errors.As(serr.err, &errno) {
			r.Errno = int(errno)
		}
		writeReport(r)
		os.Exit(1)
	}
	writeReport(report{OK: true})
	unix.Close(fdStatus)

	// Block until the lifeline reaches EOF (the starter closed it or died)
	// or we are killed. A blocking read, not select{}: with no other
	// runnable goroutines select{} would be a fatal "deadlock".
	unix.SetNonblock(fdLifeline, false)
	var buf [64]byte
	for {
		n, err := unix.Read(fdLifeline, buf[:])
		if err == unix.EINTR || (err == nil && n > 0) {
			continue
		}
		break
	}
	for spec.IgnoreLifeline {
		unix.Pause() // tests only: wait for a signal to kill us
	}
	os.Exit(0)
}

func writeReport(r report) {
	data, _ := json.Marshal(r)
	for len(data) > 0 {
		n, err := unix.Write(fdStatus, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		data = data[n:]
	}
}

func setUpTarget(spec *targetSpec) *stepError {
	if err := closeInheritedFDs(); err != nil {
		return fail("close inherited fds", err)
	}
	// Don't pin a host directory as the working directory.
	if err := unix.Chdir("/"); err != nil {
		return fail("chdir /", err)
	}
	unix.Umask(0) // modes below are exactly what is documented

	if spec.has("uts") && spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fail("sethostname", err)
		}
	}
	if !spec.has("mnt") {
		return nil
	}
	// The new mount namespace starts as a copy whose mounts may be shared
	// with the host's; make everything private first so that nothing we
	// mount propagates back.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail("make mounts private", err)
	}
	if spec.Scratch {
		return setUpScratch(spec)
	}
	if spec.FilesDir != "" {
		if err := mountTmpfs(spec.FilesDir); err != nil {
			return fail("mount tmpfs at "+spec.FilesDir, err)
		}
		if serr := writeFiles(spec.FilesDir, spec.Files); serr != nil {
			return serr
		}
	}
	if spec.MountProc {
		if err := mountProc("/proc"); err != nil {
			return fail("mount proc at /proc", err)
		}
	}
	return nil
}

// setUpScratch builds the new root on a tmpfs mounted over some existing
// directory (only inside our private mount namespace), then pivots into it.
func setUpScratch(spec *targetSpec) *stepError {
	stage := ""
	for _, dir := range []string{"/tmp", "/mnt", "/run", "/dev", "/root"} {
		var st unix.Stat_t
		if unix.Stat(dir, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			stage = dir
			break
		}
	}
	if stage == "" {
		return fail("find a directory to build the scratch root on", unix.ENOENT)
	}
	if err := mountTmpfs(stage); err != nil {
		return fail("mount tmpfs root at "+stage, err)
	}
	if serr := writeFiles(stage, spec.Files); serr != nil {
		return serr
	}
	if spec.MountProc {
		// Mount it before the old root goes: in a user namespace the
		// kernel only allows a new procfs while a fully visible one
		// exists in the mount namespace.
		if err := unix.Mkdir(stage+"/proc", 0o555); err != nil {
			return fail("mkdir /proc", err)
		}
		if err := mountProc(stage + "/proc"); err != nil {
			return fail("mount proc at /proc", err)
		}
	}
	if err := unix.Chdir(stage); err != nil {
		return fail("chdir to new root", err)
	}
	// pivot_root(".", ".") stacks the old root on top of the new one at
	// "/", so no put_old directory is needed in the new root.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fail("pivot_root", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fail("detach old root", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fail("chdir /", err)
	}
	return nil
}

func mountTmpfs(dir string) error {
	return unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755")
}

func mountProc(dir string) error {
	return unix.Mount("proc", dir, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
}

// writeFiles creates files (paths relative to root, validated by the parent)
// with mode 0644 and their missing parents with mode 0755.
func writeFiles(root string, files []fileSpec) *stepError {
	for _, f := range files {
		full := root + "/" + f.Rel
		if i := strings.LastIndexByte(f.Rel, '/'); i >= 0 {
			if err := mkdirAll(root, f.Rel[:i]); err != nil {
				return fail("create directory for /"+f.Rel, err)
			}
		}
		if err := writeFile(full, f.Content); err != nil {
			return fail("write file /"+f.Rel, err)
		}
	}
	return nil
}

func mkdirAll(root, rel string) error {
	dir := root
	for _, elem := range strings.Split(rel, "/") {
		dir += "/" + elem
		err := unix.Mkdir(dir, 0o755)
		if err == unix.EEXIST {
			var st unix.Stat_t
			if err := unix.Lstat(dir, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return unix.ENOTDIR
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func writeFile(name, content string) error {
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	data := []byte(content)
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return err
		}
		data = data[n:]
	}
	return unix.Close(fd)
}

// closeInheritedFDs closes every descriptor except stdin/stdout/stderr, the
// two pipes and the Go runtime's own netpoller descriptors, so the target
// keeps nothing of the host open (a careless parent may leak fds without
// O_CLOEXEC, and other packages' init functions ran before ours). Raw system
// calls only: os.Open would start the netpoller.
func closeInheritedFDs() error {
	dfd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	var fds []int
	buf := make([]byte, 4096)
	for {
		n, err := unix.Getdents(dfd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(dfd)
			return err
		}
		if n <= 0 {
			break
		}
		_, _, names := unix.ParseDirent(buf[:n], -1, nil)
		for _, name := range names {
			if fd, err := strconv.Atoi(name); err == nil && fd != dfd {
				fds = append(fds, fd)
			}
		}
	}
	unix.Close(dfd)
	link := make([]byte, 256)
	for _, fd := range fds {
		if fd <= 2 || fd == fdLifeline || fd == fdStatus {
			continue
		}
		n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), link)
		if err != nil {
			continue // already gone
		}
		switch string(link[:n]) {
		case "anon_inode:[eventpoll]", "anon_inode:[eventfd]":
			continue // the runtime's netpoller; closing it would crash us
		}
		unix.Close(fd)
	}
	return nil
}
