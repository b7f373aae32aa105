package procs

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// ProcCPU returns the CPU time (user + system) process pid has used, its
// exited threads included, from /proc/<pid>/stat. The kernel counts it in
// clock ticks of 10 ms, so a measured phase must use far more than that.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name (which may hold
	// spaces): state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 || i+2 > len(data) {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var utime, stime int64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat utime: %w", pid, err)
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat stime: %w", pid, err)
	}
	return time.Duration(utime+stime) * (time.Second / 100), nil // USER_HZ is 100 on Linux
}

// ThreadsCPU returns the CPU time the live threads of process pid have
// used, in nanoseconds, from /proc/<pid>/task/*/schedstat. For a process
// whose threads live as long as it does (Envoy), the difference of two
// readings is its CPU in between, with a precision ProcCPU's clock ticks
// lack.
func ThreadsCPU(pid int) (time.Duration, error) {
	dirs, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var sum int64
	for _, d := range dirs {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, d.Name()))
		if err != nil {
			continue // the thread exited
		}
		var ns int64
		if _, err := fmt.Sscan(string(data), &ns); err != nil {
			return 0, fmt.Errorf("/proc/%d/task/%s/schedstat: %w", pid, d.Name(), err)
		}
		sum += ns
	}
	return time.Duration(sum), nil
}

// SelfCPU is the CPU time (user and system) this process has used so far;
// 0 if the system does not say.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
