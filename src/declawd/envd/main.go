// envd is the init process (PID 1) of a declawd sandbox and its only agent.
//
// It serves the process and filesystem API over a unix socket that only the node
// can reach (HTTP/1.1 + JSON, see PROTOCOL.md). Invariants: envd never exits
// because a child died; every child and orphan is reaped by one reaper; file
// operations run with the requested user's credentials so the kernel enforces
// permissions inside the sandbox's own root.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

const version = "0.1.0"

// prSetChildSubreaper lets envd reap orphans even when it is not PID 1 (tests).
const prSetChildSubreaper = 36

func main() {
	socket := flag.String("socket", "/run/declawd/envd.sock", "unix socket to listen on")
	showVersion := flag.Bool("version", false, "print the version and exit")
	cgroupDir := flag.String("cgroup-dir", "", "dir with the commands' cgroup tasks files (default: next to the socket)")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("envd: ")
	syscall.Umask(0o022)
	if os.Getpid() != 1 {
		if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); errno != 0 {
			log.Printf("PR_SET_CHILD_SUBREAPER: %v", errno)
		}
	}

	if *cgroupDir == "" {
		*cgroupDir = commandCgroupDir(*socket)
	}
	cmdCgroups = mustOpenCommandCgroups(*cgroupDir)

	procs := newProcessTable()
	reaper := startReaper(procs)
	watches := newWatchTable()

	ln, err := listenUnix(*socket)
	if err != nil {
		log.Fatalf("listen %s: %v", *socket, err)
	}
	srv := &http.Server{
		Handler:           newRouter(procs, reaper, watches),
		ReadHeaderTimeout: 30 * time.Second,
		MaxHeaderBytes:    64 << 10,
	}

	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-term
		log.Printf("received %v: stopping children", sig)
		_ = ln.Close()
		procs.terminateAll(3 * time.Second)
		watches.closeAll()
		_ = os.Remove(*socket)
		os.Exit(0)
	}()

	log.Printf("version %s listening on %s (pid %d), commands' cgroups: %v",
		version, *socket, os.Getpid(), cmdCgroups.controllers())
	err = srv.Serve(ln)
	// As PID 1 envd must not return: the shutdown goroutine exits the process, and any
	// other accept failure is logged while children keep running and being reaped.
	log.Printf("serve: %v", err)
	select {}
}

// listenUnix replaces a stale socket and restricts it to root: only the node may connect.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Under gVisor the socket is a host-backed file (--host-uds=create) whose mode cannot
	// be changed from inside; the directory holding it is a 0700 host tmpfs, which is what
	// keeps other users out, so a failed chmod is not fatal.
	if err := os.Chmod(path, 0o600); err != nil {
		log.Printf("chmod %s: %v (continuing; the socket directory is private)", path, err)
	}
	return ln, nil
}
