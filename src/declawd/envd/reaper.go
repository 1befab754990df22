// The single reaper: the only caller of wait4 in envd.
//
// Children are started with syscall.ForkExec (never os/exec's Wait) so no other
// goroutine races for exit statuses. A spawn holds spawnMu for reading from fork
// until the pid is registered; the reaper takes it for writing before it looks a pid
// up, so a child that exits instantly is never mistaken for an orphan.
package main

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

type reaper struct {
	spawnMu sync.RWMutex
	procs   *processTable
}

func startReaper(procs *processTable) *reaper {
	r := &reaper{procs: procs}
	sigchld := make(chan os.Signal, 16)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go func() {
		for {
			r.reapAll()
			<-sigchld
		}
	}()
	return r
}

// reapAll collects every pending status; SIGCHLD is coalesced, so one signal may
// stand for many exits.
func (r *reaper) reapAll() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		r.spawnMu.Lock()
		p := r.procs.get(pid)
		r.spawnMu.Unlock()
		if p != nil {
			p.markExited(ws, r.procs)
		}
		// Untracked pids are orphans reparented to us: reaping them is all we owe them.
	}
}
