// Starting commands inside the commands' cgroup, below envd's own.
//
// The node may give envd, per cgroup v1 controller C, two `tasks` files in its
// cgroup directory (default /run/declawd/cgroup): `C.tasks` (the sandbox's cgroup,
// where envd lives) and `C.cmds.tasks` (a child cgroup with a lower pids/memory
// limit). Invariant: a command is born in the child cgroup, never moved there
// after it could fork, so a fork bomb or memory hog hits the child's limit while
// envd keeps its reserve. Without the files (runsc, older nodes) commands start
// exactly as before.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
)

// cgroupPair holds open `tasks` files of one controller: envd's cgroup and the child.
type cgroupPair struct {
	controller string
	parent     int
	child      int
}

type commandCgroups struct {
	pairs []cgroupPair
}

// cmdCgroups is set once in main before the server starts; nil means "start as before".
var cmdCgroups *commandCgroups

// openCommandCgroups opens every complete pair in dir; a missing dir means none.
func openCommandCgroups(dir string) (*commandCgroups, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "*.cmds.tasks"))
	if err != nil {
		return nil, err
	}
	sort.Strings(matches)
	c := &commandCgroups{}
	for _, child := range matches {
		controller := strings.TrimSuffix(filepath.Base(child), ".cmds.tasks")
		parent := filepath.Join(dir, controller+".tasks")
		pfd, err := syscall.Open(parent, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			c.close()
			return nil, fmt.Errorf("open %s: %w", parent, err)
		}
		cfd, err := syscall.Open(child, syscall.O_WRONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			syscall.Close(pfd)
			c.close()
			return nil, fmt.Errorf("open %s: %w", child, err)
		}
		c.pairs = append(c.pairs, cgroupPair{controller, pfd, cfd})
	}
	return c, nil
}

func (c *commandCgroups) close() {
	for _, p := range c.pairs {
		syscall.Close(p.parent)
		syscall.Close(p.child)
	}
	c.pairs = nil
}

func (c *commandCgroups) controllers() []string {
	var out []string
	if c != nil {
		for _, p := range c.pairs {
			out = append(out, p.controller)
		}
	}
	return out
}

// moveThisThread writes "0" (the calling thread) to a cgroup v1 `tasks` file: only
// this OS thread moves, and the kernel skips the global threadgroup lock for it.
func moveThisThread(fd int) error {
	_, err := syscall.Write(fd, []byte("0"))
	return err
}

// forkExec is syscall.ForkExec from an OS thread that sits in the child cgroups for
// the duration of the fork: the child inherits the forking thread's cgroups, so it
// never runs a single instruction in envd's cgroup.
func (c *commandCgroups) forkExec(argv0 string, argv []string, attr *syscall.ProcAttr) (int, error) {
	if c == nil || len(c.pairs) == 0 {
		return syscall.ForkExec(argv0, argv, attr)
	}
	type result struct {
		pid int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var res result
		entered := 0
		for _, p := range c.pairs {
			if err := moveThisThread(p.child); err != nil {
				res.err = fmt.Errorf("enter the commands' %s cgroup: %w", p.controller, err)
				break
			}
			entered++
		}
		if res.err == nil {
			res.pid, res.err = syscall.ForkExec(argv0, argv, attr)
		}
		back := true
		for _, p := range c.pairs[:entered] {
			if err := moveThisThread(p.parent); err != nil {
				back = false
			}
		}
		done <- res
		if back {
			runtime.UnlockOSThread()
		}
		// Otherwise the goroutine ends locked and Go discards the thread, so no envd
		// goroutine ever runs under the commands' limits.
	}()
	res := <-done
	return res.pid, res.err
}

// commandCgroupDir is where the node puts the tasks files: next to envd's socket.
func commandCgroupDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "cgroup")
}

func mustOpenCommandCgroups(dir string) *commandCgroups {
	c, err := openCommandCgroups(dir)
	if err != nil {
		// Fail loudly: starting commands under envd's own limits would let a fork
		// bomb starve envd, which is what the child cgroups exist to prevent.
		fmt.Fprintf(os.Stderr, "envd: command cgroups: %v\n", err)
		os.Exit(1)
	}
	return c
}
