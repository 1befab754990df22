// Starting a process: command line, environment, credentials, stdio or PTY.
//
// The node sends the complete environment overlay; envd only adds the login
// variables (HOME, USER, LOGNAME, SHELL, PATH) from the user's passwd entry when
// the overlay does not set them. The child runs in a new session as the user's
// uid/gid/groups; a PTY child gets the PTY as its controlling terminal.
package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"syscall"
	"unsafe"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

type ptySize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

type startRequest struct {
	Cmd       string            `json:"cmd"`
	User      string            `json:"user"`
	Envs      map[string]string `json:"envs"`
	Cwd       string            `json:"cwd"`
	Stdin     []byte            `json:"stdin"` // base64 in JSON
	KeepStdin bool              `json:"keep_stdin"`
	Pty       *ptySize          `json:"pty"`
	Tag       string            `json:"tag"`
}

// spawnError carries the API status and code of a failed start.
type spawnError struct {
	status  int
	code    string
	message string
}

func (e *spawnError) Error() string { return e.message }

func invalid(format string, args ...any) *spawnError {
	return &spawnError{400, "invalid", fmt.Sprintf(format, args...)}
}

func buildEnv(acc *account, overlay map[string]string, isPty bool) ([]string, error) {
	env := map[string]string{
		"HOME":    acc.Home,
		"USER":    acc.Name,
		"LOGNAME": acc.Name,
		"SHELL":   acc.Shell,
		"PATH":    defaultPath,
	}
	if isPty {
		env["TERM"] = "xterm-256color"
	}
	for k, v := range overlay {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, invalid("invalid environment variable: %q", k)
		}
		env[k] = v
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out, nil
}

func shellArgv(cmd string) []string {
	if st, err := os.Stat("/bin/bash"); err == nil && !st.IsDir() {
		return []string{"/bin/bash", "-l", "-c", cmd}
	}
	return []string{"/bin/sh", "-c", cmd}
}

// pipe returns (parent end, child end); the parent end is non-blocking so Go's
// poller serves it and Close interrupts pending reads and writes.
func pipe(parentReads bool) (*os.File, *os.File, error) {
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != nil {
		return nil, nil, err
	}
	r, w := fds[0], fds[1]
	parent, child := w, r
	if parentReads {
		parent, child = r, w
	}
	if err := syscall.SetNonblock(parent, true); err != nil {
		syscall.Close(r)
		syscall.Close(w)
		return nil, nil, err
	}
	return os.NewFile(uintptr(parent), "pipe"), os.NewFile(uintptr(child), "pipe"), nil
}

func openPty(size ptySize, uid, gid uint32) (master *os.File, masterFd int, slave *os.File, err error) {
	mfd, err := syscall.Open("/dev/ptmx", syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	master = os.NewFile(uintptr(mfd), "/dev/ptmx")
	var unlock int32
	if err := ioctl(mfd, syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); err != nil {
		master.Close()
		return nil, 0, nil, fmt.Errorf("unlock pty: %w", err)
	}
	var n uint32
	if err := ioctl(mfd, syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); err != nil {
		master.Close()
		return nil, 0, nil, fmt.Errorf("pty number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := syscall.Open(name, syscall.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		master.Close()
		return nil, 0, nil, fmt.Errorf("open %s: %w", name, err)
	}
	// The user owns its terminal, as after a login, so it can reopen /dev/tty.
	_ = syscall.Fchown(sfd, int(uid), int(gid))
	_ = syscall.Fchmod(sfd, 0o620)
	if err := setWinsize(mfd, size); err != nil {
		master.Close()
		syscall.Close(sfd)
		return nil, 0, nil, err
	}
	return master, mfd, os.NewFile(uintptr(sfd), name), nil
}

func setWinsize(fd int, size ptySize) error {
	ws := struct{ Row, Col, X, Y uint16 }{size.Rows, size.Cols, 0, 0}
	return ioctl(fd, syscall.TIOCSWINSZ, uintptr(unsafe.Pointer(&ws)))
}

func ioctl(fd int, req uint, arg uintptr) error {
	_, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), uintptr(req), arg)
	if errno != 0 {
		return errno
	}
	return nil
}

// spawn starts req and registers it before the reaper can look its pid up.
func spawn(req *startRequest, table *processTable, r *reaper) (*process, error) {
	if req.Cmd == "" {
		return nil, invalid("cmd is required")
	}
	if req.User == "" {
		req.User = "user"
	}
	acc, err := lookupAccount(req.User)
	if err != nil {
		return nil, &spawnError{400, "invalid", err.Error()}
	}
	cwd := req.Cwd
	if cwd == "" {
		cwd = acc.Home
		if st, err := os.Stat(cwd); err != nil || !st.IsDir() {
			cwd = "/"
		}
	} else {
		if !strings.HasPrefix(cwd, "/") {
			return nil, invalid("cwd must be absolute: %s", cwd)
		}
		st, err := os.Stat(cwd)
		if err != nil {
			return nil, invalid("cwd does not exist: %s", cwd)
		}
		if !st.IsDir() {
			return nil, &spawnError{400, "not_directory", "cwd is not a directory: " + cwd}
		}
	}
	env, err := buildEnv(acc, req.Envs, req.Pty != nil)
	if err != nil {
		return nil, err
	}

	p := &process{cmd: req.Cmd, tag: req.Tag, isPty: req.Pty != nil, envs: req.Envs,
		out: newOutputLog(outputCap), changed: make(chan struct{}), done: make(chan struct{})}
	var childFiles []*os.File
	var stdoutR, stderrR *os.File
	defer func() {
		for _, f := range childFiles {
			f.Close()
		}
	}()
	cleanup := func() {
		for _, f := range []*os.File{stdoutR, stderrR, p.stdin, p.master} {
			if f != nil {
				f.Close()
			}
		}
	}

	sys := &syscall.SysProcAttr{Setsid: true,
		Credential: &syscall.Credential{Uid: acc.Uid, Gid: acc.Gid, Groups: acc.Groups}}
	var files []uintptr
	if req.Pty != nil {
		if req.Pty.Cols == 0 || req.Pty.Rows == 0 {
			return nil, invalid("pty cols and rows must be positive")
		}
		master, mfd, slave, err := openPty(*req.Pty, acc.Uid, acc.Gid)
		if err != nil {
			return nil, &spawnError{500, "internal", err.Error()}
		}
		childFiles = append(childFiles, slave)
		p.master, p.stdin, p.stdinShared = master, master, true
		p.masterFd = mfd
		files = []uintptr{slave.Fd(), slave.Fd(), slave.Fd()}
		sys.Setctty, sys.Ctty = true, 0
	} else {
		var stdinChild *os.File
		if req.Stdin != nil || req.KeepStdin {
			w, rd, err := pipe(false)
			if err != nil {
				return nil, &spawnError{500, "internal", err.Error()}
			}
			p.stdin, stdinChild = w, rd
		} else {
			devnull, err := os.Open(os.DevNull)
			if err != nil {
				return nil, &spawnError{500, "internal", err.Error()}
			}
			stdinChild = devnull
		}
		childFiles = append(childFiles, stdinChild)
		var outW, errW *os.File
		if stdoutR, outW, err = pipe(true); err != nil {
			cleanup()
			return nil, &spawnError{500, "internal", err.Error()}
		}
		childFiles = append(childFiles, outW)
		if stderrR, errW, err = pipe(true); err != nil {
			cleanup()
			return nil, &spawnError{500, "internal", err.Error()}
		}
		childFiles = append(childFiles, errW)
		files = []uintptr{stdinChild.Fd(), outW.Fd(), errW.Fd()}
	}

	// Counted before the fork: the reaper may see the exit before the pumps start, and
	// markExited must find them (their WaitGroup count and their fds) already there.
	if p.isPty {
		p.outputs = []*os.File{p.master}
	} else {
		p.outputs = []*os.File{stdoutR, stderrR}
	}
	p.readers.Add(len(p.outputs))
	argv := shellArgv(req.Cmd)
	r.spawnMu.RLock()
	pid, err := cmdCgroups.forkExec(argv[0], argv, &syscall.ProcAttr{Dir: cwd, Env: env, Files: files, Sys: sys})
	if err == nil {
		p.pid = pid
		table.add(p)
	}
	r.spawnMu.RUnlock()
	if err != nil {
		cleanup()
		if err == syscall.EACCES || err == syscall.EPERM {
			return nil, &spawnError{400, "permission_denied", fmt.Sprintf("permission denied: %s", cwd)}
		}
		return nil, &spawnError{500, "internal", fmt.Sprintf("start %s: %v", argv[0], err)}
	}

	if p.isPty {
		go p.pump(p.master, streamStdout)
	} else {
		go p.pump(stdoutR, streamStdout)
		go p.pump(stderrR, streamStderr)
	}
	if req.Stdin != nil {
		// Written in the background: the child may not read before it has started,
		// and a write larger than the pipe buffer must not block the response.
		p.stdinMu.Lock()
		go func(data []byte, closeAfter bool) {
			if p.stdin != nil {
				_, _ = p.stdin.Write(data)
			}
			p.stdinMu.Unlock()
			if closeAfter {
				p.closeStdin()
			}
		}(req.Stdin, !req.KeepStdin)
	}
	return p, nil
}
