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
 *
 * Stages, in order:
 *   1. read the bootstrap, close every fd but 0-5, mark the process
 *      non-dumpable
 *   2. join every requested namespace except mnt and user, as host root
 *   3. fork if the pid or time namespace was joined or fresh mounts are
 *      wanted: both namespaces apply to children only, and procfs shows the
 *      pid namespace of the process that mounts it. The parent stays a
 *      small waiter that forwards signals and mirrors the child's exit, so
 *      the core keeps managing one process.
 *   4. (child) create detached procfs/sysfs mounts with the new mount API:
 *      still in the host mount namespace, so nothing is attached anywhere
 *      the target could see and no directory is created in its filesystem
 *   5. join mnt (resets root and cwd to the target's), then user, then take
 *      the target's root (or the given) uid/gid
 *   6. again non-dumpable and parent-death signal (a change of euid clears
 *      both), unshare what was asked, cwd to the socket directory
 *
 * Because the executable was exec'd on the host before joining, the kernel
 * ties its memory to the host user namespace: root inside the target can
 * neither ptrace it nor read its /proc/PID/{environ,fd,mem,cwd,root,exe}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/mount.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "nsexec.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

/* Results read by the Go side through cgo (nsexec.go). */
int nsexec_active;
int nsexec_proc_fd = -1;
int nsexec_sys_fd = -1;

struct bootstrap {
	unsigned long join;	/* CLONE_NEW* flags to join */
	unsigned long unshare;	/* CLONE_NEW* flags to unshare after joining */
	long uid, gid;		/* credentials inside the user namespace */
	int fresh;		/* NSEXEC_FRESH_* */
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

/* parse reads "join=0x..,unshare=0x..,uid=N,gid=N,fresh=N". */
static void parse(const char *s, struct bootstrap *b)
{
	b->join = b->unshare = 0;
	b->uid = b->gid = -1;
	b->fresh = 0;
	while (*s) {
		const char *eq = strchr(s, '=');
		char *end;
		unsigned long v;

		if (!eq)
			fail("malformed bootstrap (missing '=')", 0);
		errno = 0;
		v = strtoul(eq + 1, &end, 0);
		if (errno || end == eq + 1 || (*end && *end != ','))
			fail("malformed bootstrap value", 0);
		if (!strncmp(s, "join=", 5))
			b->join = v;
		else if (!strncmp(s, "unshare=", 8))
			b->unshare = v;
		else if (!strncmp(s, "uid=", 4))
			b->uid = (long)v;
		else if (!strncmp(s, "gid=", 4))
			b->gid = (long)v;
		else if (!strncmp(s, "fresh=", 6))
			b->fresh = (int)v;
		else
			fail("unknown bootstrap key", 0);
		s = *end ? end + 1 : end;
	}
}

static void join(unsigned long flags, const char *stage)
{
	if (flags && setns(NSEXEC_PIDFD, (int)flags) < 0)
		fail(stage, errno);
}

/* fresh_mount makes a detached mount of fstype (procfs or sysfs) and
 * returns its fd. Nothing is attached to any directory. */
static int fresh_mount(const char *fstype)
{
	int fsfd, mfd;

	fsfd = (int)syscall(SYS_fsopen, fstype, FSOPEN_CLOEXEC);
	if (fsfd < 0)
		fail(fstype[0] == 'p' ? "fsopen(proc)" : "fsopen(sysfs)", errno);
	if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0)
		fail(fstype[0] == 'p' ? "fsconfig(proc)" : "fsconfig(sysfs)", errno);
	mfd = (int)syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC,
			   MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
	if (mfd < 0)
		fail(fstype[0] == 'p' ? "fsmount(proc)" : "fsmount(sysfs)", errno);
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
	 * so no zombie is left for the target's init to collect. */
	kill(waiter_child, sig == SIGTERM ? SIGKILL : sig);
}

/* wait_and_mirror is the rest of the waiter's life: forward the signals a
 * supervisor sends, and exit as the child exited. */
static void wait_and_mirror(pid_t child)
{
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
	struct sigaction sa;
	unsigned i;
	int status;

	waiter_child = child;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = forward;
	for (i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	/* Die through SIGTERM, not SIGKILL, when the core dies: see forward. */
	prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
	/* The child holds everything the core talks to. */
	syscall(SYS_close_range, 0, ~0U, 0);
	for (;;) {
		if (waitpid(child, &status, 0) < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (WIFEXITED(status))
			_exit(WEXITSTATUS(status));
		if (WIFSIGNALED(status))
			_exit(128 + WTERMSIG(status));
	}
}

static void take_credentials(const struct bootstrap *b)
{
	/* setgroups is denied in user namespaces whose creator wrote "deny"
	 * to /proc/PID/setgroups; the remaining host groups are unmapped
	 * there, which is harmless. */
	if (setgroups(0, NULL) < 0 && errno != EPERM)
		fail("setgroups", errno);
	if (b->gid >= 0 && setresgid((gid_t)b->gid, (gid_t)b->gid, (gid_t)b->gid) < 0)
		fail("setresgid (is the gid mapped in the target's user namespace?)", errno);
	if (b->uid >= 0 && setresuid((uid_t)b->uid, (uid_t)b->uid, (uid_t)b->uid) < 0)
		fail("setresuid (is the uid mapped in the target's user namespace?)", errno);
}

__attribute__((constructor)) static void nsexec(void)
{
	const char *env = getenv(NSEXEC_ENV);
	const unsigned long late = CLONE_NEWNS | CLONE_NEWUSER;
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
	if (syscall(SYS_close_range, NSEXEC_STATUS_FD + 1, ~0U, 0) < 0)
		fail("close_range", errno);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("prctl(PR_SET_DUMPABLE)", errno);
	if (fcntl(NSEXEC_STATUS_FD, F_SETFD, FD_CLOEXEC) < 0)
		fail("status fd missing", errno);

	/* Stage 2 */
	join(b.join & ~late, "setns(pidfd, ipc|uts|net|pid|cgroup|time)");

	/* Stage 3 */
	if (b.join & (CLONE_NEWPID | CLONE_NEWTIME) || b.fresh) {
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

	/* Stage 5 */
	join(b.join & CLONE_NEWNS, "setns(pidfd, mnt)");
	join(b.join & CLONE_NEWUSER, "setns(pidfd, user)");
	take_credentials(&b);

	/* Stage 6 */
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
		fail("prctl(PR_SET_DUMPABLE)", errno);
	guard_parent(parent);
	if (b.unshare && unshare((int)b.unshare) < 0)
		fail("unshare", errno);
	if (fchdir(NSEXEC_SOCKDIR_FD) < 0)
		fail("fchdir(socket directory)", errno);
	close(NSEXEC_SOCKDIR_FD);
	close(NSEXEC_PIDFD);
}
