/*
 * nsexec: join a target's namespaces before the Go runtime starts.
 *
 * Why C: setns(2) of the mount and user namespaces fails in a multi-threaded
 * process, and the Go runtime starts threads before main. A constructor runs
 * in the dynamic loader, while the process is still single-threaded.
 *
 * The constructor does nothing unless the environment names a bootstrap
 * (NSEXEC_ENV, written by the Go side in bootstrap.go). The core then passes:
 *   fd 3  a pidfd of the target (pinned by the core: a recycled PID cannot
 *         be entered by mistake; setns fails with ESRCH if it has exited)
 *   fd 4  the instance's socket directory on the host (a directory the
 *         target cannot see); it becomes the cwd so the plugin can bind its
 *         socket by a relative name, and the sdk leaves it before serving
 *   fd 5  a status pipe: on failure one line of text is written to it and
 *         the process exits with status 1
 *   fd 6  the frame channel: a SOCK_SEQPACKET socket to the core that
 *         carries requests, responses, cancellation and the file
 *         descriptors a handler hands back (wire/README.md)
 *
 * Stages, in order:
 *   1. read the bootstrap, close every fd but 0-6, mark the process
 *      non-dumpable
 *   2. join every requested namespace except mnt and user, as host root
 *   3. fork if the pid, time or mnt namespace was joined or fresh mounts
 *      are wanted: pid and time apply to children only, procfs shows the
 *      pid namespace of the process that mounts it, and the root keeper of
 *      stage 6 needs a parent outside the target. The parent stays a
 *      small waiter that forwards signals and mirrors the child's exit, so
 *      the core keeps managing one process.
 *   4. (child) create detached procfs/sysfs/cgroup2 mounts with the new
 *      mount API: still in the host mount namespace, so nothing is attached
 *      anywhere the target could see and no directory is created in its
 *      filesystem. It comes after stage 2 and 3 because what a mount shows
 *      is fixed when it is made: procfs the pid namespace of the process
 *      that makes it (the child's: the joined one), sysfs the network
 *      namespace, cgroup2 the cgroup namespace, whose root becomes the
 *      mount's root (the target's cgroup, not the host's whole tree);
 *      and before stage 5, while still host root: as root of a rootless
 *      target's user namespace the kernel could refuse them
 *   5. join mnt (resets root and cwd to the target's), then user, and
 *      unshare what was asked (a mount namespace unshared is made a slave
 *      of the target's, so nothing mounted in it propagates out), all
 *      still privileged
 *   6. (mnt joined) park the root: open the target's root (or the
 *      credentials' root), then make the socket directory both root and
 *      cwd, and leave the target's root with a small keeper process that
 *      shares our fs_struct (see park_root)
 *   7. take the target's root (or the given) uid/gid, or the credentials
 *      a request acts for (ids, groups, capabilities)
 *   8. again non-dumpable and parent-death signal (a change of euid clears
 *      both), cwd to the socket directory
 *
 * Why park the root: between this constructor and the first line of
 * nsplug's Go code, glibc (/proc/self/maps, for cgo's stack bounds) and the
 * Go runtime (/proc/self/cgroup, /proc/self/mountinfo, cgroup cpu.max,
 * /sys/kernel/mm/transparent_hugepage/hpage_pmd_size) open files by
 * absolute path. With the target's root as ours, root in the target could
 * plant a FIFO there and stall every start, or feed the runtime forged
 * values. With the socket directory as root (empty, on the host, made by
 * the core) those opens find nothing, at once, and both fall back to their
 * defaults (the stack bound then is estimated, as on libcs without
 * pthread_getattr_np). Once Go runs, nsexec_enter_root (EnterRoot in Go)
 * has the keeper move the shared root into the target: only the keeper
 * still holds CAP_SYS_CHROOT when the request's credentials have none.
 *
 * Because the executable was exec'd on the host before joining, the kernel
 * ties its memory to the host user namespace: root inside the target can
 * neither ptrace it nor read its /proc/PID/{environ,fd,mem,cwd,root,exe}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nsexec.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* Results read by the Go side through cgo (nsexec.go). */
int nsexec_active;
unsigned long nsexec_joined;
int nsexec_proc_fd = -1;
int nsexec_sys_fd = -1;
int nsexec_cgroup_fd = -1;
/* Our end of the socketpair to the root keeper (park_root). */
static int keeper_fd = -1;

struct bootstrap {
	unsigned long join;	/* CLONE_NEW* flags to join */
	unsigned long unshare;	/* CLONE_NEW* flags to unshare after joining */
	long uid, gid;		/* credentials inside the user namespace */
	int fresh;		/* NSEXEC_FRESH_* */
	int ngroups;		/* -1: leave the supplementary groups alone */
	gid_t groups[NSEXEC_MAX_GROUPS];
	int hascaps;		/* capability sets were given */
	unsigned long long caps[3];	/* effective, permitted, inheritable */
};

static void fail(const char *stage, int err)
{
	char msg[256];
	int n;

	if (err)
		n = snprintf(msg, sizeof(msg), "nsexec: %s: %s (errno %d)\n", stage, strerror(err), err);
	else
		n = snprintf(msg, sizeof(msg), "nsexec: %s\n", stage);
	if (n > 0) {
		if (write(NSEXEC_STATUS_FD, msg, (size_t)n) < 0) {
			/* Nobody to tell; the exit status still says we failed. */
		}
	}
	_exit(1);
}

/* number parses one unsigned number of a list ending at ',' or NUL, with
 * sep separating list elements; *s moves past it. */
static unsigned long long number(const char **s, char sep)
{
	unsigned long long v;
	char *end;

	errno = 0;
	v = strtoull(*s, &end, 0);
	if (errno || end == *s || (*end && *end != ',' && *end != sep))
		fail("malformed bootstrap value", 0);
	*s = end;
	return v;
}

/* parse reads "key=value,..." with keys join, unshare, uid, gid, fresh,
 * groups (g1:g2:...) and caps (effective:permitted:inheritable). */
static void parse(const char *s, struct bootstrap *b)
{
	memset(b, 0, sizeof(*b));
	b->uid = b->gid = -1;
	b->ngroups = -1;
	while (*s) {
		const char *eq = strchr(s, '=');
		size_t klen;

		if (!eq)
			fail("malformed bootstrap (missing '=')", 0);
		klen = (size_t)(eq - s);
#define KEY(k) (klen == sizeof(k) - 1 && !strncmp(s, k, klen))
		if (KEY("join")) {
			s = eq + 1;
			b->join = number(&s, 0);
		} else if (KEY("unshare")) {
			s = eq + 1;
			b->unshare = number(&s, 0);
		} else if (KEY("uid")) {
			s = eq + 1;
			b->uid = (long)number(&s, 0);
		} else if (KEY("gid")) {
			s = eq + 1;
			b->gid = (long)number(&s, 0);
		} else if (KEY("fresh")) {
			s = eq + 1;
			b->fresh = (int)number(&s, 0);
		} else if (KEY("groups")) {
			s = eq + 1;
			b->ngroups = 0;
			while (*s && *s != ',') {
				if (b->ngroups == NSEXEC_MAX_GROUPS)
					fail("too many supplementary groups", 0);
				b->groups[b->ngroups++] = (gid_t)number(&s, ':');
				if (*s == ':')
					s++;
			}
		} else if (KEY("caps")) {
			int i;

			s = eq + 1;
			b->hascaps = 1;
			for (i = 0; i < 3; i++) {
				b->caps[i] = number(&s, ':');
				if (i < 2 && *s++ != ':')
					fail("malformed capability sets", 0);
			}
		} else {
			fail("unknown bootstrap key", 0);
		}
#undef KEY
		if (*s == ',')
			s++;
	}
}

static void join(unsigned long flags, const char *stage)
{
	if (flags && setns(NSEXEC_PIDFD, (int)flags) < 0)
		fail(stage, errno);
}

/* fresh_mount makes a detached mount of fstype (proc, sysfs or cgroup2)
 * and returns its fd. Nothing is attached to any directory. What it shows
 * is fixed by the namespaces the process is in when it calls fsopen: the
 * pid namespace of the caller (procfs), its network namespace (sysfs), its
 * cgroup namespace, whose root becomes the mount's root (cgroup2). */
static int fresh_mount(const char *fstype)
{
	char stage[64];
	int fsfd, mfd;

	fsfd = (int)syscall(SYS_fsopen, fstype, FSOPEN_CLOEXEC);
	if (fsfd < 0) {
		snprintf(stage, sizeof(stage), "fsopen(%s)", fstype);
		fail(stage, errno);
	}
	if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		snprintf(stage, sizeof(stage), "fsconfig(%s)", fstype);
		fail(stage, errno);
	}
	mfd = (int)syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC,
			   MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	if (mfd < 0) {
		snprintf(stage, sizeof(stage), "fsmount(%s)", fstype);
		fail(stage, errno);
	}
	close(fsfd);
	return mfd;
}

/* guard_parent sets the parent-death signal and verifies the parent did
 * not die before it was set (then we would wait for a signal that never
 * comes). expect == 0 means "a parent outside my pid namespace". */
static void guard_parent(pid_t expect)
{
	if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0)
		fail("prctl(PR_SET_PDEATHSIG)", errno);
	if (getppid() != expect)
		fail("parent died during start", 0);
}

static pid_t waiter_child;

static void forward(int sig)
{
	if (waiter_child <= 0)
		return;
	/* SIGTERM is how the core (or, as parent-death signal, the core's
	 * death) stops an instance: kill the child outright and reap it here,
	 * so the child never outlives the waiter as an orphan (reparented to a
	 * reaper outside our control, a zombie until that reaper waits). */
	kill(waiter_child, sig == SIGTERM ? SIGKILL : sig);
}

/* wait_and_mirror is the rest of the waiter's life: forward the signals a
 * supervisor sends, and exit as the child exited. */
static void wait_and_mirror(pid_t child)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
	struct sigaction sa;
	unsigned i;
	int status, exit_code = -1;

	waiter_child = child;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	/* Die through SIGTERM, not SIGKILL, when the core dies: see forward. */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	/* The child holds everything the core talks to. */
	syscall(SYS_close_range, 0, ~0U, 0);
	/* The root keeper (park_root) is a child too: reap it, and wait for
	 * it before leaving, so that it never outlives us as an orphan. */
	for (;;) {
		pid_t pid = waitpid(-1, &status, 0);

		if (pid < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ECHILD && exit_code >= 0)
				_exit(exit_code);
			_exit(1);
		}
		if (pid != child)
			continue;
		waiter_child = 0;
		if (WIFEXITED(status))
			exit_code = WEXITSTATUS(status);
		else if (WIFSIGNALED(status))
			exit_code = 128 + WTERMSIG(status);
	}
}

/* take_credentials becomes who the request acts for: root of the target's
 * user namespace by default, or the caller's ids, groups and capabilities.
 * The kernel then checks permissions as it would for that caller. */
static void take_credentials(const struct bootstrap *b)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];
	int i;

	/* setgroups is denied in user namespaces whose creator wrote "deny"
	 * to /proc/PID/setgroups; the remaining host groups are unmapped
	 * there, which is harmless when no groups were asked for. */
	if (setgroups(b->ngroups > 0 ? (size_t)b->ngroups : 0, b->groups) < 0 &&
	    (errno != EPERM || b->ngroups > 0))
		fail("setgroups", errno);
	if (b->gid >= 0 && setresgid((gid_t)b->gid, (gid_t)b->gid, (gid_t)b->gid) < 0)
		fail("setresgid (is the gid mapped in the target's user namespace?)", errno);
	/* Keep the permitted set across the uid change when capabilities
	 * were asked for; capset below trims it to exactly those. */
	if (b->hascaps && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		fail("prctl(PR_SET_KEEPCAPS)", errno);
	if (b->uid >= 0 && setresuid((uid_t)b->uid, (uid_t)b->uid, (uid_t)b->uid) < 0)
		fail("setresuid (is the uid mapped in the target's user namespace?)", errno);
	/* The kernel drops capabilities on a change away from uid 0 only
	 * when the old uid was root *of the current user namespace*; host
	 * root that just joined a namespace mapping it nowhere is not, so
	 * capabilities are set explicitly: those asked for, or none for a
	 * uid other than 0. */
	if (!b->hascaps && b->uid <= 0)
		return;
	for (i = 0; i < 2; i++) {
		data[i].effective = (unsigned)(b->caps[0] >> (32 * i));
		data[i].permitted = (unsigned)(b->caps[1] >> (32 * i));
		data[i].inheritable = (unsigned)(b->caps[2] >> (32 * i));
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		fail("capset", errno);
	if (b->hascaps)
		prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
}

/* park_root makes the socket directory our root and cwd until Go code calls
 * nsexec_enter_root, and starts a keeper that shares our fs_struct
 * (CLONE_FS: root and cwd are one object for both processes and for every
 * thread the Go runtime will start). The keeper keeps the privilege we are
 * about to drop and an O_PATH fd of the root to enter; when we shut our
 * end of the socketpair it chroots there, which moves our root too, and
 * answers 0 or the errno. It is the waiter's child (CLONE_PARENT), so
 * whatever happens to us it is reaped outside the target. root is the
 * credentials' root, resolved in the target's mount namespace, or NULL for
 * the target's own. parent is what getppid() says while the waiter lives. */
static void park_root(const char *root, pid_t parent)
{
	int target, sv[2];
	pid_t pid;
	char c;

	target = open(root && *root ? root : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (target < 0)
		fail(root && *root ? "open (credentials' root)" : "open (target's root)", errno);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		fail("socketpair", errno);
	if (fchdir(NSEXEC_SOCKDIR_FD) < 0)
		fail("fchdir(socket directory)", errno);
	if (chroot(".") < 0)
		fail("chroot(socket directory)", errno);
	/* A raw clone: no atfork handlers, and the child runs only C. */
	pid = (pid_t)syscall(SYS_clone, CLONE_FS | CLONE_PARENT | SIGCHLD, NULL, NULL, NULL, NULL);
	if (pid < 0)
		fail("clone(CLONE_FS)", errno);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		if (getppid() != parent)
			_exit(1);
		/* Keep only the two fds it needs, as 0 and 1: the status
		 * pipe, say, must close when the serving process closes it. */
		if (dup2(target, 0) < 0 || dup2(sv[1], 1) < 0)
			_exit(1);
		syscall(SYS_close_range, 2, ~0U, 0);
		while (read(1, &c, 1) < 0 && errno == EINTR)
			;
		c = 0;
		if (fchdir(0) < 0 || chroot(".") < 0)
			c = (char)errno;
		if (write(1, &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(target);
	close(sv[1]);
	keeper_fd = sv[0];
}

int nsexec_enter_root(void)
{
	ssize_t n;
	char c;

	if (keeper_fd < 0)
		return 0;
	if (shutdown(keeper_fd, SHUT_WR) < 0)
		return errno;
	do
		n = read(keeper_fd, &c, 1);
	while (n < 0 && errno == EINTR);
	close(keeper_fd);
	keeper_fd = -1;
	if (n < 0)
		return errno;
	if (n == 0)
		return ECHILD; /* the keeper died before it moved the root */
	return (unsigned char)c;
}

__attribute__((constructor)) static void nsexec(void)
{
	const char *env = getenv(NSEXEC_ENV);
	const unsigned long late = CLONE_NEWNS | CLONE_NEWUSER;
	const char *root = getenv(NSEXEC_ROOT_ENV);
	struct bootstrap b;
	pid_t parent = getppid(), self;

	if (!env)
		return;
	nsexec_active = 1;

	/* Stage 1 */
	parse(env, &b);
	/* Only the fds of the contract survive: whatever else the core's own
	 * parent let it inherit without close-on-exec (a host directory, say)
	 * must not reach the target. */
	if (syscall(SYS_close_range, NSEXEC_LAST_FD + 1, ~0U, 0) < 0)
		fail("close_range", errno);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("prctl(PR_SET_DUMPABLE)", errno);
	if (fcntl(NSEXEC_STATUS_FD, F_SETFD, FD_CLOEXEC) < 0)
		fail("status fd missing", errno);

	/* Stage 2 */
	join(b.join & ~late, "setns(pidfd, ipc|uts|net|pid|cgroup|time)");

	/* Stage 3 */
	if (b.join & (CLONE_NEWPID | CLONE_NEWTIME | CLONE_NEWNS) || b.fresh) {
		pid_t child;

		self = getpid();
		child = fork();
		if (child < 0)
			fail("fork", errno);
		if (child > 0)
			wait_and_mirror(child);
		/* In a joined pid namespace the waiter is outside: getppid()
		 * is 0 while it lives. */
		parent = (b.join & CLONE_NEWPID) ? 0 : self;
		guard_parent(parent);
	}

	/* Stage 4 */
	if (b.fresh & NSEXEC_FRESH_PROC)
		nsexec_proc_fd = fresh_mount("proc");
	if (b.fresh & NSEXEC_FRESH_SYS)
		nsexec_sys_fd = fresh_mount("sysfs");
	if (b.fresh & NSEXEC_FRESH_CGROUP)
		nsexec_cgroup_fd = fresh_mount("cgroup2");

	/* Stage 5 */
	join(b.join & CLONE_NEWNS, "setns(pidfd, mnt)");
	join(b.join & CLONE_NEWUSER, "setns(pidfd, user)");
	/* Before the keeper exists: unsharing mnt unshares the fs_struct. */
	if (b.unshare && unshare((int)b.unshare) < 0)
		fail("unshare", errno);
	/* A copy of the target's mount table is still a peer of its shared
	 * mounts: make every mount a slave, so that the copy still sees the
	 * target's changes and nothing mounted here propagates out. */
	if ((b.unshare & CLONE_NEWNS) && mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
		fail("mount(/, MS_REC|MS_SLAVE) after unshare(mnt)", errno);

	/* Stage 6 */
	if (b.join & CLONE_NEWNS)
		park_root(root, parent);
	else if (root && *root && chroot(root) < 0)
		fail("chroot (credentials' root)", errno);

	/* Stage 7 */
	take_credentials(&b);
	nsexec_joined = b.join;

	/* Stage 8 */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("prctl(PR_SET_DUMPABLE)", errno);
	guard_parent(parent);
	if (fchdir(NSEXEC_SOCKDIR_FD) < 0)
		fail("fchdir(socket directory)", errno);
	close(NSEXEC_SOCKDIR_FD);
	close(NSEXEC_PIDFD);
}
