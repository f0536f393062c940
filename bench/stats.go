package bench

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Summary describes a sample of durations.
type Summary struct {
	N                       int
	Min, P50, P90, P99, Max time.Duration
	Mean                    time.Duration
}

// Summarize sorts a copy of d and returns its summary. Percentiles are
// nearest-rank.
func Summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	return Summary{
		N:    len(s),
		Min:  s[0],
		P50:  Percentile(s, 50),
		P90:  Percentile(s, 90),
		P99:  Percentile(s, 99),
		Max:  s[len(s)-1],
		Mean: sum / time.Duration(len(s)),
	}
}

// Percentile is the nearest-rank p-th percentile of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	rank = max(0, min(rank, len(sorted)-1))
	return sorted[rank]
}

func us(d time.Duration) float64 { return round(float64(d)/float64(time.Microsecond), 1) }

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}

// ProcMem is what /proc/PID/status and smaps_rollup say about a process's
// memory, in KiB.
type ProcMem struct {
	RSS, RSSAnon, RSSFile, RSSShmem, PSS int64
	Threads                              int64 // a count, not KiB
}

// MiB converts KiB to MiB.
func MiB(kib int64) float64 { return round(float64(kib)/1024, 2) }

// ReadProcMem reads the memory of pid ("self" for this process).
func ReadProcMem(pid string) (ProcMem, error) {
	var m ProcMem
	fields := map[string]*int64{"VmRSS:": &m.RSS, "RssAnon:": &m.RSSAnon, "RssFile:": &m.RSSFile, "RssShmem:": &m.RSSShmem, "Threads:": &m.Threads}
	if err := scanKiB("/proc/"+pid+"/status", fields); err != nil {
		return m, err
	}
	if m.RSS == 0 {
		return m, fmt.Errorf("/proc/%s/status: no VmRSS", pid)
	}
	// Pss is best effort (smaps_rollup needs ptrace access; we are root).
	scanKiB("/proc/"+pid+"/smaps_rollup", map[string]*int64{"Pss:": &m.PSS})
	return m, nil
}

func scanKiB(path string, fields map[string]*int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 2 {
			if p := fields[fs[0]]; p != nil {
				*p, _ = strconv.ParseInt(fs[1], 10, 64)
			}
		}
	}
	return s.Err()
}

// TaskCPU is the CPU time the threads of pid have used so far (the sum of
// /proc/PID/task/*/schedstat, nanoseconds). Threads that have exited are
// not counted; a Go plugin's threads live as long as it does.
func TaskCPU(pid int) (time.Duration, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, t := range tasks {
		data, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // exited meanwhile
		}
		f := strings.Fields(string(data))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s/%s/schedstat: %q", dir, t.Name(), data)
		}
		sum += time.Duration(ns)
	}
	return sum, nil
}

// SelfCPU is the CPU time (user + system) this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ContextSwitches is the number of context switches (voluntary and not)
// the live threads of pid ("self" for this process) have made so far.
func ContextSwitches(pid string) int64 {
	dir := "/proc/" + pid + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum int64
	for _, t := range tasks {
		var vol, nonvol int64
		scanKiB(dir+"/"+t.Name()+"/status", map[string]*int64{"voluntary_ctxt_switches:": &vol, "nonvoluntary_ctxt_switches:": &nonvol})
		sum += vol + nonvol
	}
	return sum
}
