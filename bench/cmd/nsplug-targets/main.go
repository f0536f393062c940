// Command nsplug-targets holds many targets warm in one core, with the
// machine's defaults, and reports what that costs from the host side: the
// "several hundred real targets" check of the cost per target, by hand.
//
//	nsplug-targets -targets 1000
//
// It starts the targets (fresh user, mount, pid, net, ipc and uts
// namespaces each), prepares every built-in in all of them at once under
// the default timeouts, sends each one procfs.read, and prints processes,
// threads, PSS, the core's fds and RSS, and failures.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

func main() {
	builtin.Main() // this binary serves the built-ins it starts
	n := flag.Int("targets", 1000, "targets to hold warm")
	flag.Parse()
	if err := run(*n); err != nil {
		fmt.Fprintln(os.Stderr, "nsplug-targets:", err)
		os.Exit(1)
	}
}

func run(n int) error {
	var targets []*sandbox.Sandbox
	defer func() {
		for _, t := range targets {
			t.Close()
		}
	}()
	for range n {
		t, err := sandbox.Start(sandbox.Options{Hostname: "many"})
		if err != nil {
			return fmt.Errorf("target %d: %w", len(targets)+1, err)
		}
		targets = append(targets, t)
	}
	// The targets' own fds (this process started them) are not the core's.
	base, _ := os.ReadDir("/proc/self/fd")
	d, err := core.New(config.Default(), core.Options{Builtins: builtin.All()})
	if err != nil {
		return err
	}
	defer d.Close()

	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := d.Prepare(context.Background(), core.Target{PID: t.PID()})
			if err == nil {
				_, err = d.Dispatch(context.Background(), core.Request{PID: t.PID(), Type: "procfs.read", Payload: json.RawMessage(`{"path":"/proc/sys/kernel/hostname"}`)})
			}
			if err != nil {
				mu.Lock()
				failed = append(failed, err.Error())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	warm := time.Since(start)

	insts := d.Instances()
	var pss, threads, procs int
	for _, in := range insts {
		for _, pid := range []int{in.PID, in.RunnerPID} {
			if pid == in.PID || in.RunnerPID != in.PID {
				pss += statusKiB(pid, "/smaps_rollup", "Pss:")
				threads += statusKiB(pid, "/status", "Threads:")
				procs++
			}
		}
	}
	fds, _ := os.ReadDir("/proc/self/fd")
	fmt.Printf("targets %d, all warm (Prepare + one procfs.read each, concurrently, default timeouts) in %.2fs, %d failed\n", n, warm.Seconds(), len(failed))
	for i, f := range failed {
		if i == 5 {
			break
		}
		fmt.Println("  ", f)
	}
	fmt.Printf("instances %d, plugin processes %d (waiters included), threads %d, PSS %.1f MiB (%.2f MiB per target)\n",
		len(insts), procs, threads, float64(pss)/1024, float64(pss)/1024/float64(n))
	fmt.Printf("core: %d fds (%.2f per target; the targets' own not counted), RSS %.1f MiB (targets' bookkeeping in this process included), %d threads\n", len(fds)-len(base), float64(len(fds)-len(base))/float64(n),
		float64(statusKiB(os.Getpid(), "/status", "VmRSS:"))/1024, statusKiB(os.Getpid(), "/status", "Threads:"))
	return nil
}

// statusKiB reads the number after key in /proc/PID/file.
func statusKiB(pid int, file, key string) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + file)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	return 0
}
