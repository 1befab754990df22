// Running a file operation with a user's filesystem credentials.
//
// The operation runs on a fresh goroutine locked to its OS thread; that thread
// switches fsuid/fsgid/groups with raw per-thread syscalls (glibc-style broadcast
// to all threads must NOT happen) and is never unlocked, so the Go runtime
// terminates it when the goroutine ends and no other goroutine ever runs with
// borrowed credentials. Changing fsuid away from 0 also drops CAP_DAC_OVERRIDE and
// friends for that thread, so the kernel enforces ordinary permissions.
package main

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"
)

// asUser runs fn with acc's filesystem identity (root acts directly).
func asUser(acc *account, fn func() error) error {
	if acc.Uid == 0 {
		return fn()
	}
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread dies with this goroutine.
		if err := switchThreadCredentials(acc); err != nil {
			result <- err
			return
		}
		result <- fn()
	}()
	return <-result
}

func switchThreadCredentials(acc *account) error {
	groups := make([]uint32, len(acc.Groups))
	copy(groups, acc.Groups)
	var ptr unsafe.Pointer
	if len(groups) > 0 {
		ptr = unsafe.Pointer(&groups[0])
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETGROUPS, uintptr(len(groups)), uintptr(ptr), 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	// Switch this thread's effective ids (the filesystem ids follow them). Raw syscalls
	// act on the calling thread only, unlike syscall.Setresuid which Go applies to every
	// thread; this works on Linux and under gVisor (which does not implement setfsuid).
	// The saved uid stays 0, but the thread is discarded after the operation.
	minus1 := ^uintptr(0)
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESGID, minus1, uintptr(acc.Gid), minus1); e != 0 {
		return fmt.Errorf("could not switch to gid %d: %w", acc.Gid, e)
	}
	if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, minus1, uintptr(acc.Uid), minus1); e != 0 {
		return fmt.Errorf("could not switch to uid %d: %w", acc.Uid, e)
	}
	if uid, _, _ := syscall.RawSyscall(syscall.SYS_GETEUID, 0, 0, 0); uint32(uid) != acc.Uid {
		return fmt.Errorf("could not switch to uid %d gid %d", acc.Uid, acc.Gid)
	}
	runtime.KeepAlive(groups)
	return nil
}
