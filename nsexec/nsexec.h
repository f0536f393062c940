/* The bootstrap contract between the core and the constructor in nsexec.c:
 * the single definition of its environment, descriptors and limits. The Go
 * side (bootstrap.go) takes every constant from here through cgo; what the
 * fds are for and the order of the stages are in nsexec.c's header, and
 * wire/README.md ("Bootstrap") is the overview a reader opens first. */
#ifndef NSPLUG_NSEXEC_H
#define NSPLUG_NSEXEC_H

#define NSEXEC_ENV "_NSPLUG_NSEXEC"
/* A root directory to chroot to (credentials); the cwd is the Go side's. */
#define NSEXEC_ROOT_ENV "_NSPLUG_NSEXEC_ROOT"

#define NSEXEC_PIDFD 3
#define NSEXEC_SOCKDIR_FD 4
#define NSEXEC_STATUS_FD 5
/* The frame channel: a SOCK_SEQPACKET socket to the core that carries
 * requests, responses, cancellation and handed-back fds (SCM_RIGHTS); see
 * wire/README.md. The constructor only keeps it open. */
#define NSEXEC_FRAMES_FD 6
#define NSEXEC_LAST_FD NSEXEC_FRAMES_FD

#define NSEXEC_FRESH_PROC 1
#define NSEXEC_FRESH_SYS 2
#define NSEXEC_FRESH_CGROUP 4

/* The most supplementary groups a bootstrap carries. */
#define NSEXEC_MAX_GROUPS 64

extern int nsexec_active;
extern unsigned long nsexec_joined;
extern int nsexec_proc_fd;
extern int nsexec_sys_fd;
extern int nsexec_cgroup_fd;

/* Moves the process's root from the socket directory, where the constructor
 * parked it, into the target's filesystem (its root, or the credentials'
 * root); the cwd becomes that root. Every plugin calls it once, after
 * binding its socket and before serving: until then the process sees only
 * the socket directory. Returns 0, or an errno. A no-op when the mount
 * namespace was not joined. */
int nsexec_enter_root(void);

#endif
