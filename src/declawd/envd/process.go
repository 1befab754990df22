// Processes started through envd: spawn, output capture, stdin, signals, exit.
//
// Each process runs in its own session (its pid is its process group id), so a
// signal reaches everything it spawned. Exit statuses come only from the reaper;
// the exit event is published after the output pipes drain: to EOF, or, when a
// background grandchild holds one open, once it has been empty for a short grace
// period. What the process wrote before it exited is all in the pipe's buffer, so a
// reader that gets no CPU for a while (32 commands at once on 2 cores) still reads
// it before the exit is published (`drainNow`).
package main

import (
	"errors"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"
)

const (
	outputCap     = 64 << 20 // bytes kept per stream per process
	keepExited    = 1000     // exited processes that stay queryable
	exitGrace     = 200 * time.Millisecond
	readChunkSize = 32 << 10
	// A pipe holds at most fs.pipe-max-size (1 MiB by default) of what was written
	// before the exit; a background writer that goes on is not followed beyond it.
	finalDrainMax = 1 << 20
	// Only for an output fd without deadlines (never seen: the pipes and the PTY master
	// are non-blocking, so Go polls them); the exit is not held longer than this.
	exitHardCap = 30 * time.Second
)

type process struct {
	pid   int
	cmd   string
	tag   string
	isPty bool
	envs  map[string]string

	mu       sync.Mutex
	out      *outputLog
	changed  chan struct{} // closed and replaced on every change
	finished bool
	exitCode int
	signal   int
	exitSeq  int64
	done     chan struct{} // closed when the exit event is published

	readers sync.WaitGroup
	outputs []*os.File // what the pumps read, set before the fork and never changed

	stdinMu     sync.Mutex
	stdin       *os.File // pipe write end or PTY master; nil when closed/none
	stdinShared bool     // stdin is the PTY master, which the reader still needs
	master      *os.File
	masterFd    int // raw fd: calling master.Fd() would switch it to blocking mode
}

func (p *process) broadcastLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *process) appendOutput(stream int, data []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.finished {
		return // late output of lingering grandchildren after the exit event
	}
	p.out.append(stream, data)
	p.broadcastLocked()
}

// pump copies one output fd into the log until EOF (or EIO for a PTY master), or,
// after the exit, until the read deadline `markExited` sets passes with the fd empty.
func (p *process) pump(f *os.File, stream int) {
	defer p.readers.Done()
	defer f.Close()
	for {
		buf := make([]byte, readChunkSize)
		n, err := f.Read(buf)
		if n > 0 {
			p.appendOutput(stream, buf[:n:n])
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			p.drainNow(f, stream)
			return
		}
		if err != nil {
			return
		}
	}
}

// drainNow reads what the fd holds right now, without waiting. A deadline that passed
// while this goroutine waited for a CPU fails the next Read before it reads anything,
// so the deadline is cleared and the fd (non-blocking) is read directly until EAGAIN.
func (p *process) drainNow(f *os.File, stream int) {
	if f.SetReadDeadline(time.Time{}) != nil {
		return
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	for total := 0; total < finalDrainMax; {
		buf := make([]byte, readChunkSize)
		var n int
		var rerr error
		if raw.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), buf)
			return true // never wait for more: EAGAIN means empty
		}) != nil || rerr != nil || n <= 0 {
			return
		}
		p.appendOutput(stream, buf[:n:n])
		total += n
	}
}

// markExited is called by the reaper; publishing waits for the output to drain.
func (p *process) markExited(ws syscall.WaitStatus, table *processTable) {
	go func() {
		limit := exitHardCap
		for _, f := range p.outputs {
			// ends a read that would wait longer (a grandchild holding the pipe); an
			// fd the pump already closed at EOF answers ErrClosed, which is fine
			if err := f.SetReadDeadline(time.Now().Add(exitGrace)); errors.Is(err, os.ErrNoDeadline) {
				limit = exitGrace // the old rule for an fd Go cannot poll
			}
		}
		drained := make(chan struct{})
		go func() { p.readers.Wait(); close(drained) }()
		timer := time.NewTimer(limit)
		select {
		case <-drained:
		case <-timer.C:
		}
		timer.Stop()
		p.mu.Lock()
		switch {
		case ws.Signaled():
			p.signal = int(ws.Signal())
			p.exitCode = 128 + p.signal
		default:
			p.exitCode = ws.ExitStatus()
		}
		p.finished = true
		p.exitSeq = p.out.nextSeq
		p.out.nextSeq++
		p.broadcastLocked()
		close(p.done)
		p.mu.Unlock()
		p.closeStdin()
		table.retire(p)
	}()
}

var errStdinClosed = errors.New("stdin is closed")

func (p *process) writeStdin(data []byte) error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return errStdinClosed
	}
	_, err := p.stdin.Write(data)
	return err
}

// closeStdin closes a pipe; on a PTY it sends EOF (^D) since the master is shared
// with the output reader.
func (p *process) closeStdin() {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdin == nil {
		return
	}
	if p.stdinShared {
		p.mu.Lock()
		finished := p.finished
		p.mu.Unlock()
		if !finished {
			_, _ = p.stdin.Write([]byte{4})
		}
	} else {
		_ = p.stdin.Close()
	}
	p.stdin = nil
}

func (p *process) signalGroup(sig syscall.Signal) bool {
	return syscall.Kill(-p.pid, sig) == nil
}

type processInfo struct {
	Pid       int               `json:"pid"`
	Cmd       string            `json:"cmd"`
	Tag       string            `json:"tag"`
	IsPty     bool              `json:"is_pty"`
	Envs      map[string]string `json:"envs"`
	Running   bool              `json:"running"`
	ExitCode  *int              `json:"exit_code,omitempty"`
	Truncated bool              `json:"truncated"`
}

func (p *process) info() processInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	envs := p.envs
	if envs == nil {
		envs = map[string]string{}
	}
	in := processInfo{Pid: p.pid, Cmd: p.cmd, Tag: p.tag, IsPty: p.isPty, Envs: envs,
		Running: !p.finished, Truncated: p.out.truncated[0] || p.out.truncated[1]}
	if p.finished {
		code := p.exitCode
		in.ExitCode = &code
	}
	return in
}

// processTable owns every tracked process; exited ones are kept FIFO up to keepExited.
type processTable struct {
	mu     sync.Mutex
	byPid  map[int]*process
	exited []*process
}

func newProcessTable() *processTable {
	return &processTable{byPid: map[int]*process{}}
}

func (t *processTable) get(pid int) *process {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byPid[pid]
}

func (t *processTable) add(p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.byPid[p.pid] = p
}

func (t *processTable) retire(p *process) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.exited = append(t.exited, p)
	for len(t.exited) > keepExited {
		old := t.exited[0]
		t.exited[0] = nil
		t.exited = t.exited[1:]
		// A reused pid may already map to a newer process; only forget the old one.
		if t.byPid[old.pid] == old {
			delete(t.byPid, old.pid)
		}
	}
}

func (t *processTable) list() []processInfo {
	t.mu.Lock()
	ps := make([]*process, 0, len(t.byPid))
	for _, p := range t.byPid {
		ps = append(ps, p)
	}
	t.mu.Unlock()
	sort.Slice(ps, func(i, j int) bool { return ps[i].pid < ps[j].pid })
	out := make([]processInfo, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.info())
	}
	return out
}

func (t *processTable) running() []*process {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*process
	for _, p := range t.byPid {
		select {
		case <-p.done:
		default:
			out = append(out, p)
		}
	}
	return out
}

// terminateAll sends SIGTERM to every running group, then SIGKILL after grace.
func (t *processTable) terminateAll(grace time.Duration) {
	running := t.running()
	for _, p := range running {
		p.signalGroup(syscall.SIGTERM)
	}
	deadline := time.After(grace)
	for _, p := range running {
		select {
		case <-p.done:
		case <-deadline:
			for _, q := range running {
				q.signalGroup(syscall.SIGKILL)
			}
			return
		}
	}
}
